"""Event versions compare as semantic versions: missing parts are zero ("2" == "2.0")."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import ClassVar
from uuid import uuid4

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cqrs import (
    Aggregate,
    ConfigurationError,
    DomainEvent,
    PersistedEventStore,
    SemanticVersionEventUpcaster,
    SerializedEvent,
    default_codec,
)
from cqrs.upcasting import check_upcaster_order, parse_version
from cqrs_memory import MemoryEventRepository

# A version as its list of parts: 1 to 4 small non-negative integers.
parts = st.lists(st.integers(0, 12), min_size=1, max_size=4)


async def memory() -> MemoryEventRepository:
    """An open in-memory repository (every repository must be open to be used)."""
    repository = MemoryEventRepository()
    await repository.open()
    return repository


def text(version: list[int]) -> str:
    return ".".join(map(str, version))


def padded(version: list[int], width: int = 8) -> list[int]:
    return version + [0] * (width - len(version))


def reference_cmp(a: list[int], b: list[int]) -> int:
    """Semantic-version order: compare part by part, a missing part counting as zero."""
    x, y = padded(a), padded(b)
    return (x > y) - (x < y)


def cmp(a: str, b: str) -> int:
    x, y = parse_version(a), parse_version(b)
    return (x > y) - (x < y)


@pytest.mark.parametrize("version", ["2", "2.0", "2.0.0", "2.0.0.0"])
def test_missing_parts_are_zero(version):
    assert parse_version(version) == parse_version("2.0")


@pytest.mark.parametrize(
    ("older", "newer"),
    [("1", "1.0.1"), ("1.9", "1.10"), ("1.10", "2"), ("2", "2.0.1"), ("0", "0.0.1"), ("9", "10")],
)
def test_order(older, newer):
    assert cmp(older, newer) == -1
    assert cmp(newer, older) == 1


@pytest.mark.parametrize(
    "version", ["", "v2", "1..2", "1.", ".1", "-1", " 1", "1 ", "1_0", "+1", "1.0a", "\u00b2"]
)
def test_anything_but_dotted_integers_is_refused(version):
    with pytest.raises(ValueError, match="invalid event version"):
        parse_version(version)
    assert not SemanticVersionEventUpcaster("E", "2.0", dict).can_upcast("E", version)


@given(parts, parts, st.integers(0, 3), st.integers(0, 3))
def test_padding_with_zeros_never_changes_a_comparison(a, b, zeros_a, zeros_b):
    expected = reference_cmp(a, b)
    assert cmp(text(a), text(b)) == expected
    assert cmp(text(a + [0] * zeros_a), text(b + [0] * zeros_b)) == expected


@given(parts, parts, st.integers(0, 2), st.integers(0, 2))
def test_an_upcaster_fires_exactly_below_its_version(target, stored, zeros_t, zeros_s):
    upcaster = SemanticVersionEventUpcaster("E", text(target + [0] * zeros_t), dict)
    below = reference_cmp(stored, target) < 0
    assert upcaster.can_upcast("E", text(stored + [0] * zeros_s)) is below
    assert not upcaster.can_upcast("E", text(target + [0] * zeros_s))  # its own version
    assert not upcaster.can_upcast("Other", text(stored))


@pytest.mark.parametrize("stored", ["2", "2.0", "2.0.0", "2.0.1", "2.1", "3"])
def test_an_upcaster_never_fires_at_or_above_its_version(stored):
    assert not SemanticVersionEventUpcaster("E", "2.0", dict).can_upcast("E", stored)
    assert not SemanticVersionEventUpcaster("E", "2", dict).can_upcast("E", stored)


@pytest.mark.parametrize(
    "versions",
    [("2.0", "2"), ("2", "2.0.0"), ("1.1", "1.1"), ("2.0", "1.10"), ("1.1", "2", "1.2")],
)
def test_order_check_refuses_newest_first_and_the_same_version_twice(versions):
    upcasters = [SemanticVersionEventUpcaster("E", v, dict) for v in versions]
    with pytest.raises(ConfigurationError, match="oldest first"):
        check_upcaster_order(upcasters)


def test_order_check_accepts_a_chain_and_other_event_types():
    check_upcaster_order(
        [
            SemanticVersionEventUpcaster("E", "1.1", dict),
            SemanticVersionEventUpcaster("F", "1.0", dict),
            SemanticVersionEventUpcaster("E", "1.10", dict),
            SemanticVersionEventUpcaster("E", "2", dict),
            SemanticVersionEventUpcaster("F", "1.0.1", dict),
        ]
    )


# -- the chain 1.0 -> 1.1 -> 2.0 through a store ----------------------------------------------


@dataclass(frozen=True)
class Renamed(DomainEvent):
    event_type: ClassVar[str] = "Renamed"
    event_version: ClassVar[str] = "2.0"
    full_name: str
    source: str
    steps: tuple[str, ...] = ()


@dataclass
class Person(Aggregate[str, Renamed, None]):
    aggregate_type: ClassVar[str] = "Person"
    event_classes: ClassVar[tuple[type[object], ...]] = (Renamed,)
    name: str = ""

    async def handle(self, command: str, services: None) -> list[Renamed]:
        return [Renamed(command, "current")]

    def apply(self, event: Renamed) -> None:
        self.name = event.full_name


def to_1_1(payload):
    return {"full_name": payload.pop("name"), "steps": ["1.1"]}


def to_2_0(payload):
    return {**payload, "source": "upcast", "steps": [*payload["steps"], "2.0"]}


CHAIN = [
    SemanticVersionEventUpcaster("Renamed", "1.1", to_1_1),
    SemanticVersionEventUpcaster("Renamed", "2.0", to_2_0),
]


def stored(sequence: int, version: str, payload: dict[str, object]) -> SerializedEvent:
    return SerializedEvent(
        "Person",
        "p",
        sequence,
        "Renamed",
        version,
        default_codec.encode(payload),
        b"{}",
        datetime.now(UTC),
        uuid4(),
    )


async def test_the_chain_upgrades_old_events_and_leaves_current_ones_alone():
    repository = await memory()
    current: dict[str, object] = {"full_name": "cur", "source": "stored", "steps": []}
    await repository.persist(
        [
            stored(1, "1", {"name": "one"}),
            stored(2, "1.0", {"name": "two"}),
            stored(3, "1.0.0", {"name": "three"}),
            stored(4, "1.1", {"full_name": "four", "steps": []}),
            stored(5, "1.1.0", {"full_name": "five", "steps": []}),
            stored(6, "2", current),
            stored(7, "2.0", current),
            stored(8, "2.0.0", current),
        ],
        None,
    )
    store = PersistedEventStore(repository, Person).with_upcasters(CHAIN)
    payloads = [e.payload for e in await store.load_events("p")]
    assert payloads[:3] == [
        Renamed(name, "upcast", ("1.1", "2.0")) for name in ("one", "two", "three")
    ]
    assert payloads[3:5] == [Renamed(name, "upcast", ("2.0",)) for name in ("four", "five")]
    assert payloads[5:] == [Renamed("cur", "stored")] * 3  # at 2.0 however written: untouched
    assert (await store.load_aggregate("p")).aggregate.name == "cur"
