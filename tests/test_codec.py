"""The codec: exact round trips for the types events use, pydantic through the same API."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

import msgspec
import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cqrs import DomainEvent, MsgspecCodec, SemanticVersionEventUpcaster, default_codec
from cqrs.upcasting import RawEvent, parse_version


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclass(frozen=True)
class Line:
    sku: str
    price: Decimal


@dataclass(frozen=True)
class OrderPlaced(DomainEvent):
    order_id: uuid.UUID
    at: datetime
    due: date
    colour: Colour
    lines: tuple[Line, ...]
    tags: dict[str, int] = field(default_factory=dict)
    note: str | None = None


class PydanticEvent(pydantic.BaseModel, DomainEvent):
    model_config = pydantic.ConfigDict(frozen=True)
    amount: Decimal
    at: datetime


def test_dataclass_event_round_trips_exactly():
    event = OrderPlaced(
        uuid.uuid4(),
        datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=timezone(timedelta(hours=2))),
        date(2026, 2, 3),
        Colour.BLUE,
        (Line("a", Decimal("0.1")), Line("b", Decimal("12345678901234567890.000000001"))),
        {"x": 1},
        "ünï\x00code",
    )
    encoded = default_codec.encode(event)
    assert b'"0.1"' in encoded  # decimals are stored as strings: exact
    assert default_codec.decode(encoded, OrderPlaced) == event
    assert default_codec.convert(default_codec.decode_untyped(encoded), OrderPlaced) == event


def test_pydantic_event_through_the_same_interface():
    event = PydanticEvent(amount=Decimal("1.10"), at=datetime(2026, 1, 1, tzinfo=UTC))
    encoded = default_codec.encode(event)
    assert default_codec.decode(encoded, PydanticEvent) == event
    assert default_codec.convert(default_codec.decode_untyped(encoded), PydanticEvent) == event
    assert PydanticEvent.event_type == "PydanticEvent"
    assert PydanticEvent.event_version == "1.0"


def test_decimals_decode_from_json_numbers_exactly():
    decoded = default_codec.decode(b'{"sku": "a", "price": 0.30000000000000004}', Line)
    assert decoded.price == Decimal("0.30000000000000004")


def test_wrong_shapes_raise_value_errors():
    with pytest.raises(ValueError, match="price"):
        default_codec.decode(b'{"sku": "a", "price": []}', Line)
    with pytest.raises(ValueError):  # noqa: PT011 - msgspec's message varies
        default_codec.decode(b"{not json", Line)
    with pytest.raises(TypeError, match="cannot encode"):
        default_codec.encode(object())


def test_metadata_decodes_as_strings_only():
    assert default_codec.decode_metadata(b'{"a": "b"}') == {"a": "b"}
    with pytest.raises(msgspec.ValidationError):
        default_codec.decode_metadata(b'{"a": 1}')


def test_event_names_default_to_class_name_and_one_dot_zero():
    class Custom(DomainEvent):
        event_type = "custom-name"
        event_version = "3.2"

    class Child(Custom):
        pass

    assert (Custom.event_type, Custom.event_version) == ("custom-name", "3.2")
    assert Child.event_type == "Child"
    assert MsgspecCodec().encode({"k": Decimal(1)}) == b'{"k":"1"}'


def test_versions_compare_as_dotted_integers():
    assert parse_version("1.10") > parse_version("1.9")
    for bad in ("", "1.x", "-1", "v1"):
        with pytest.raises(ValueError, match="invalid event version"):
            parse_version(bad)


json_objects = st.dictionaries(
    st.text(max_size=5),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=5),
        lambda children: st.lists(children, max_size=3),
        max_leaves=5,
    ),
    max_size=4,
)


@given(payload=json_objects, minor=st.integers(min_value=0, max_value=20))
def test_upcasting_a_current_event_is_the_identity(payload, minor):
    upcaster = SemanticVersionEventUpcaster("E", f"2.{minor}", lambda p: {"changed": True})
    current = RawEvent("E", f"2.{minor}", payload)
    newer = RawEvent("E", f"2.{minor + 1}", payload)
    assert not upcaster.can_upcast(current.event_type, current.event_version)
    assert not upcaster.can_upcast(newer.event_type, newer.event_version)
    assert not upcaster.can_upcast("Other", "0.1")
    assert upcaster.can_upcast("E", "1.99")
    assert upcaster.upcast(RawEvent("E", "1.0", payload)) == RawEvent(
        "E", f"2.{minor}", {"changed": True}
    )
