"""TaggedCodec's conversions from plain values (what an upcaster hands back), which classes
are unit variants, and for_aggregate's options, tested on the codec itself."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import ClassVar, NamedTuple

import msgspec
import pydantic
import pytest

from cqrs import ConfigurationError, MsgspecCodec
from cqrs.tagged import TaggedCodec


@dataclass
class Deposited:
    event_type: ClassVar[str] = "Deposited"
    amount: Decimal


@dataclass
class Closed:
    event_type: ClassVar[str] = "Closed"


class StructFull(msgspec.Struct):
    event_type: ClassVar[str] = "StructFull"
    n: int


class StructUnit(msgspec.Struct):
    event_type: ClassVar[str] = "StructUnit"


class ModelFull(pydantic.BaseModel):
    event_type: ClassVar[str] = "ModelFull"
    n: int


class ModelUnit(pydantic.BaseModel):
    event_type: ClassVar[str] = "ModelUnit"


class Plain(NamedTuple):
    """Neither a dataclass, a Struct nor a model: taken as having fields, even none."""


@dataclass
class Snapshot:
    balance: Decimal


def every_kind() -> TaggedCodec:
    """A codec for an event class of each kind, built in the test that uses it (a codec built
    at import time would tell mutmut that no test looks at how it tells the kinds apart)."""
    return TaggedCodec([Deposited, Closed, StructFull, StructUnit, ModelFull, ModelUnit])


@pytest.mark.parametrize(
    ("event", "encoded"),
    [
        (Closed(), b'"Closed"'),
        (StructUnit(), b'"StructUnit"'),
        (ModelUnit(), b'"ModelUnit"'),
        (StructFull(3), b'{"StructFull":{"n":3}}'),
        (ModelFull(n=3), b'{"ModelFull":{"n":3}}'),
        (Deposited(Decimal("1.5")), b'{"Deposited":{"amount":"1.5"}}'),
    ],
)
def test_classes_without_fields_are_unit_variants(event, encoded):
    codec = every_kind()
    assert codec.encode(event) == encoded
    assert codec.decode(encoded, type(event)) == event


def test_a_class_of_unknown_kind_is_taken_as_having_fields():
    codec = TaggedCodec([Plain], tags={Plain: "Plain"})
    assert codec.encode(Plain()) == b'{"Plain":[]}'


def test_convert_reads_the_tagged_form_an_upcaster_returns():
    codec = every_kind()
    assert codec.convert({"Deposited": {"amount": "2"}}, Deposited) == Deposited(Decimal(2))
    assert codec.convert("Closed", Closed) == Closed()
    assert codec.convert({"Closed": None}, Closed) == Closed()
    assert codec.convert({"Closed": {}}, Closed) == Closed()
    assert codec.convert({"balance": "3"}, Snapshot) == Snapshot(Decimal(3))  # not an event


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"Closed": {}}, "expected a variant tagged 'Deposited' for Deposited, found 'Closed'"),
        ({}, "expected a variant tagged 'Deposited' for Deposited, found nothing"),
        (
            {"Deposited": {"amount": "1"}, "x": 1},
            "expected a variant tagged 'Deposited' for Deposited, found 'Deposited', 'x'",
        ),
        ("Closed", "expected a variant tagged 'Deposited' for Deposited, found 'Closed'"),
    ],
)
def test_convert_refuses_another_variant_by_name(value, message):
    with pytest.raises(ValueError) as raised:  # noqa: PT011 - the message is checked below
        every_kind().convert(value, Deposited)
    assert str(raised.value) == message


def test_convert_refuses_a_value_that_is_not_tagged():
    with pytest.raises(TypeError) as raised:
        every_kind().convert(["Deposited"], Deposited)
    assert str(raised.value) == "expected a variant tagged 'Deposited', not list"


def test_for_aggregate_passes_tags_and_the_inner_codec_on():
    class Account:
        event_classes = (Deposited, Closed)

    inner = MsgspecCodec()
    codec = TaggedCodec.for_aggregate(Account, tags={Closed: "AccountClosed"}, inner=inner)
    assert codec.inner is inner
    assert codec.tags == {Deposited: "Deposited", Closed: "AccountClosed"}
    assert codec.encode(Closed()) == b'"AccountClosed"'

    class Empty:
        event_classes = ()

    with pytest.raises(ConfigurationError) as raised:
        TaggedCodec.for_aggregate(Empty)
    assert str(raised.value).endswith("Empty.event_classes must list its event classes")


@dataclass
class Noted:
    event_type: ClassVar[str] = "Noted"
    note: str = "none"


def test_a_variant_with_fields_is_not_read_from_a_null_or_empty_conversion():
    codec = TaggedCodec([Noted, Closed])
    assert codec.convert({"Noted": {"note": "y"}}, Noted) == Noted("y")
    assert codec.decode(b'{"Noted":{"note":"y"}}', Noted) == Noted("y")
    with pytest.raises(msgspec.ValidationError):
        codec.decode(b'{"Noted":null}', Noted)  # only a unit variant may be null


def test_decoding_something_that_is_not_a_variant_says_what_was_expected():
    with pytest.raises(ValueError) as raised:  # noqa: PT011 - the message is checked below
        every_kind().decode(b"[1]", Deposited)
    assert str(raised.value) == (
        "expected a variant tagged 'Deposited' (an object with one key, or a string)"
    )


def test_tags_for_classes_that_are_not_events_are_refused_by_name():
    with pytest.raises(ConfigurationError) as raised:
        TaggedCodec([Deposited], tags={Snapshot: "S", Noted: "N"})
    assert str(raised.value) == (
        "tags name classes that are not among the event classes: Noted, Snapshot"
    )


@pytest.mark.parametrize("body", [5, "x", [1]])
def test_a_unit_variant_with_a_body_that_is_no_object_is_refused(body):
    codec = TaggedCodec([Closed])
    with pytest.raises(msgspec.ValidationError):
        codec.convert({"Closed": body}, Closed)
    with pytest.raises(msgspec.ValidationError):
        codec.decode(msgspec.json.encode({"Closed": body}), Closed)
