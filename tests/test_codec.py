"""The codec: exact round trips for the types events use, pydantic through the same API."""

from __future__ import annotations

import enum
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import msgspec
import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cqrs import DomainEvent, MsgspecCodec, SemanticVersionEventUpcaster, default_codec
from cqrs.codec import schema_fingerprint
from cqrs.upcasting import RawEvent, parse_version
from examples.bank_account.domain import BankAccount


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


# -- schema fingerprints (what a snapshot is checked against) ----------------------------------


def _dataclass(name: str, doc: str = "", /, **fields: type[object]) -> type[object]:
    """A dataclass ``name`` whose fields all default to None."""
    annotations = {field_name: type_ | None for field_name, type_ in fields.items()}
    namespace = {"__annotations__": annotations, "__doc__": doc, **dict.fromkeys(fields)}
    return dataclass(type(name, (), namespace))


def _pydantic(name: str, doc: str = "", /, **fields: type[object]) -> type[object]:
    model: type[object] = pydantic.create_model(
        name, **{k: (v | None, None) for k, v in fields.items()}
    )  # type: ignore[call-overload]
    model.__doc__ = doc
    return model


@pytest.mark.parametrize("make", [_dataclass, _pydantic], ids=["dataclass", "pydantic"])
def test_schema_fingerprint_changes_with_the_structure_only(make):
    base = schema_fingerprint(make("State", title=str, balance=Decimal, tags=list[str]))
    assert len(base) == 64
    assert int(base, 16) >= 0  # SHA-256 hex
    # Documentation does not count; a field named "title" or "description" does.
    same = make("State", "Documented at length.", title=str, balance=Decimal, tags=list[str])
    assert schema_fingerprint(same) == base
    changed = {
        "renamed": make("State", name=str, balance=Decimal, tags=list[str]),
        "removed": make("State", title=str, balance=Decimal),
        "added": make("State", title=str, balance=Decimal, tags=list[str], description=str),
        "retyped": make("State", title=str, balance=int, tags=list[str]),
        "retyped inside": make("State", title=str, balance=Decimal, tags=list[int]),
    }
    fingerprints = {what: schema_fingerprint(cls) for what, cls in changed.items()}
    assert base not in fingerprints.values()
    assert len(set(fingerprints.values())) == len(fingerprints)


def test_schema_fingerprint_sees_nested_types_and_defaults():
    inner_v1 = _dataclass("Inner", amount=Decimal)
    inner_v2 = _dataclass("Inner", amount=Decimal, note=str)
    outer_v1 = _dataclass("Outer", inner=inner_v1)
    outer_v2 = _dataclass("Outer", inner=inner_v2)
    assert schema_fingerprint(outer_v1) != schema_fingerprint(outer_v2)

    @dataclass
    class Counter:
        count: int = 0

    first = schema_fingerprint(Counter)

    @dataclass
    class Counter:  # type: ignore[no-redef]
        count: int = 1

    assert schema_fingerprint(Counter) != first


def test_schema_fingerprint_is_the_same_in_every_process():
    code = (
        "from examples.bank_account.domain import BankAccount\n"
        "from cqrs.codec import schema_fingerprint\n"
        "print(schema_fingerprint(BankAccount))\n"
    )
    root = Path(__file__).parent.parent
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            cwd=root,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout.strip()
        for seed in ("1", "2")
    }
    assert outputs == {schema_fingerprint(BankAccount)}


def test_schema_fingerprint_of_a_type_without_a_schema_is_a_type_error():
    class Opaque:
        pass

    with pytest.raises(TypeError):
        schema_fingerprint(Opaque)
