"""Snapshots that no longer fit the aggregate class are never used, on every backend.

Aggregates give every field a default and the codec ignores unknown keys, so a snapshot
written before a field was renamed, removed, added or retyped would decode "successfully"
into a wrong state. Each snapshot carries a fingerprint of the state schema it was written
with; a load by a class with another fingerprint replays the events instead, and the next
commit writes a fresh snapshot. Every check compares the whole state with a full replay.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, ClassVar
from uuid import uuid4

import pytest

from cqrs import (
    Aggregate,
    ConfigurationError,
    DomainEvent,
    PersistedEventRepository,
    PersistedEventStore,
    SerializedEvent,
    SerializedSnapshot,
    default_codec,
    event_type_of,
)
from cqrs.codec import schema_fingerprint

# -- one stream ("Ledger"), several versions of its aggregate class ------------------------


@dataclass(frozen=True)
class Opened(DomainEvent):
    owner: str


@dataclass(frozen=True)
class Deposited(DomainEvent):
    cents: int


class Ledger(Aggregate[None, Opened | Deposited, None]):
    """What every version shares: the stream, its events, a handler that decides nothing."""

    aggregate_type: ClassVar[str] = "Ledger"
    event_classes: ClassVar[Sequence[type[object]]] = (Opened, Deposited)

    async def handle(self, command: None, services: None) -> list[Opened | Deposited]:
        return []


@dataclass
class LedgerV1(Ledger):
    """The version that wrote the old snapshots."""

    owner: str = ""
    balance: int = 0  # cents
    deposits: int = 0

    def apply(self, event: Opened | Deposited) -> None:
        if isinstance(event, Opened):
            self.owner = event.owner
        else:
            self.balance += event.cents
            self.deposits += 1


@dataclass
class LedgerRenamed(Ledger):
    """``owner`` is now ``holder``: an old snapshot would decode with ``holder == ""``."""

    holder: str = ""
    balance: int = 0
    deposits: int = 0

    def apply(self, event: Opened | Deposited) -> None:
        if isinstance(event, Opened):
            self.holder = event.owner
        else:
            self.balance += event.cents
            self.deposits += 1


@dataclass
class LedgerRemoved(Ledger):
    """``deposits`` is gone."""

    owner: str = ""
    balance: int = 0

    def apply(self, event: Opened | Deposited) -> None:
        if isinstance(event, Opened):
            self.owner = event.owner
        else:
            self.balance += event.cents


@dataclass
class LedgerRetyped(Ledger):
    """``balance`` is now in euros: an old snapshot's 1750 (cents) would decode as 1750 euros."""

    owner: str = ""
    balance: Decimal = Decimal(0)
    deposits: int = 0

    def apply(self, event: Opened | Deposited) -> None:
        if isinstance(event, Opened):
            self.owner = event.owner
        else:
            self.balance += Decimal(event.cents) / 100
            self.deposits += 1


@dataclass
class LedgerAdded(Ledger):
    """``largest`` is new: an old snapshot would decode with ``largest == 0``."""

    owner: str = ""
    balance: int = 0
    deposits: int = 0
    largest: int = 0

    def apply(self, event: Opened | Deposited) -> None:
        if isinstance(event, Opened):
            self.owner = event.owner
        else:
            self.balance += event.cents
            self.deposits += 1
            self.largest = max(self.largest, event.cents)


class Opaque:
    """A type msgspec has no JSON Schema for."""


# The state of a full replay of HISTORY + TAIL under each class, written out by hand so a
# broken replay cannot make the comparison pass.
HISTORY = (Opened("ann"), Deposited(500), Deposited(1250))  # snapshot_every=3: one at 3
TAIL = (Deposited(75),)  # after the snapshot
EXPECTED: dict[type[Ledger], Ledger] = {
    LedgerRenamed: LedgerRenamed("ann", 1825, 3),
    LedgerRemoved: LedgerRemoved("ann", 1825),
    LedgerRetyped: LedgerRetyped("ann", Decimal("18.25"), 3),
    LedgerAdded: LedgerAdded("ann", 1825, 3, 1250),
}
NEW_CLASSES = pytest.mark.parametrize(
    "new_class", list(EXPECTED), ids=lambda cls: cls.__name__.removeprefix("Ledger").lower()
)


async def commit(store: PersistedEventStore[Any, Any, Any, Any], *events: object) -> None:
    context = await store.load_aggregate("l")
    await store.commit(events, context, {})


async def write_old_snapshot(repository: PersistedEventRepository) -> SerializedSnapshot:
    """HISTORY and TAIL committed by the old class: a snapshot at 3, then one more event."""
    old = PersistedEventStore(repository, LedgerV1, snapshot_every=3)
    await commit(old, *HISTORY)
    await commit(old, *TAIL)
    snapshot = await repository.get_snapshot("Ledger", "l")
    assert snapshot is not None
    assert snapshot.last_sequence == 3
    return snapshot


def count_full_reads(repository: PersistedEventRepository) -> list[str]:
    """Record every get_events call (a full replay); a snapshot load reads get_last_events."""
    reads: list[str] = []
    real_get_events = repository.get_events

    async def get_events(aggregate_type, aggregate_id):
        reads.append(aggregate_id)
        return await real_get_events(aggregate_type, aggregate_id)

    repository.get_events = get_events  # type: ignore[method-assign]
    return reads


@NEW_CLASSES
async def test_a_snapshot_of_an_older_class_is_replaced_by_a_full_replay(
    repository, new_class, caplog
):
    snapshot = await write_old_snapshot(repository)
    # The trap: the old state decodes into the new class without an error.
    old_state = default_codec.decode_untyped(snapshot.payload)["state"]  # type: ignore[index]
    default_codec.convert(old_state, new_class)
    new = PersistedEventStore(repository, new_class, snapshot_every=3)
    replayed = await PersistedEventStore(repository, new_class).load_aggregate("l")
    assert replayed.aggregate == EXPECTED[new_class]
    with caplog.at_level(logging.WARNING, logger="cqrs.store"):
        loaded = await new.load_aggregate("l")
    assert loaded.aggregate == replayed.aggregate
    assert loaded.aggregate.aggregate_id == "l"
    assert loaded.version == replayed.version == 4
    assert loaded.replace_snapshot
    assert any("another state schema" in r.getMessage() for r in caplog.records)


@NEW_CLASSES
async def test_the_next_commit_replaces_a_snapshot_that_no_longer_fits(repository, new_class):
    await write_old_snapshot(repository)
    new = PersistedEventStore(repository, new_class, snapshot_every=3)
    await commit(new, Deposited(5))  # sequence 5: no multiple of 3, yet a snapshot is due
    snapshot = await repository.get_snapshot("Ledger", "l")
    assert snapshot is not None
    assert (snapshot.last_sequence, snapshot.snapshot_version) == (5, 2)
    full_reads = count_full_reads(repository)
    loaded = await new.load_aggregate("l")
    assert full_reads == []  # the fresh snapshot is used
    assert not loaded.replace_snapshot
    await commit(new, Deposited(6))  # sequence 6 crosses 6: a snapshot, as usual
    loaded = await new.load_aggregate("l")
    assert full_reads == []
    replayed = await PersistedEventStore(repository, new_class).load_aggregate("l")
    assert loaded.aggregate == replayed.aggregate
    assert loaded.version == replayed.version == 6
    # Loading with the old class again falls back to its events just the same.
    old_replayed = await PersistedEventStore(repository, LedgerV1).load_aggregate("l")
    old_loaded = await PersistedEventStore(repository, LedgerV1, snapshot_every=3).load_aggregate(
        "l"
    )
    assert old_loaded.aggregate == old_replayed.aggregate == LedgerV1("ann", 1836, 5)


async def test_a_snapshot_of_the_same_schema_is_used(repository):
    await write_old_snapshot(repository)

    # As after a restart or a deploy that changed only code: another class object, with the
    # same name and fields (the docstring does not count).
    same_fields: type[LedgerV1] = dataclass(
        type("LedgerV1", (LedgerV1,), {"__doc__": "Rewritten docs."})
    )
    assert schema_fingerprint(same_fields) == schema_fingerprint(LedgerV1)
    full_reads = count_full_reads(repository)
    loaded = await PersistedEventStore(repository, same_fields, snapshot_every=3).load_aggregate(
        "l"
    )
    assert full_reads == []
    assert loaded.aggregate == same_fields("ann", 1825, 3)
    assert (loaded.version, loaded.replace_snapshot) == (4, False)


async def test_a_snapshot_without_a_fingerprint_is_not_used(repository):
    # What an older version of the store wrote: the bare state. This one is wrong on purpose
    # (balance 999999): using it would show.
    bare = SerializedSnapshot(
        "Ledger", "l", default_codec.encode(LedgerV1("ann", 999_999, 2)), 3, 1
    )
    rows = [_row(sequence, event) for sequence, event in enumerate(HISTORY + TAIL, start=1)]
    await repository.persist(rows[:3], bare)
    await repository.persist(rows[3:], None)
    old = PersistedEventStore(repository, LedgerV1)
    loaded = await PersistedEventStore(repository, LedgerV1, snapshot_every=3).load_aggregate("l")
    replayed = await old.load_aggregate("l")
    assert loaded.aggregate == replayed.aggregate == LedgerV1("ann", 1825, 3)
    assert loaded.version == 4
    assert loaded.replace_snapshot


async def test_a_declared_snapshot_schema_replaces_the_fingerprint(repository):
    @dataclass
    class DeclaredV1(LedgerV1):
        snapshot_schema: ClassVar[str | None] = "ledger-1"

    @dataclass
    class DeclaredCompatible(LedgerAdded):
        """The author vouches that old snapshots still decode right (here they do not:
        ``largest`` stays 0, which is what the author chose)."""

        snapshot_schema: ClassVar[str | None] = "ledger-1"

    @dataclass
    class DeclaredNew(LedgerAdded):
        snapshot_schema: ClassVar[str | None] = "ledger-2"

    written = PersistedEventStore(repository, DeclaredV1, snapshot_every=3)
    await commit(written, *HISTORY)
    await commit(written, *TAIL)
    snapshot = await repository.get_snapshot("Ledger", "l")
    assert snapshot is not None
    assert default_codec.decode_untyped(snapshot.payload)["schema"] == "ledger-1"  # type: ignore[index]
    kept = await PersistedEventStore(
        repository, DeclaredCompatible, snapshot_every=3
    ).load_aggregate("l")
    assert kept.aggregate == DeclaredCompatible("ann", 1825, 3, 75)  # snapshot + tail
    assert not kept.replace_snapshot
    replayed = await PersistedEventStore(repository, DeclaredNew, snapshot_every=3).load_aggregate(
        "l"
    )
    assert replayed.aggregate == DeclaredNew("ann", 1825, 3, 1250)
    assert replayed.replace_snapshot


async def test_snapshot_settings_that_cannot_work_are_configuration_errors(repository):
    @dataclass
    class Unfingerprintable(LedgerV1):
        secret: Opaque | None = None

    with pytest.raises(ConfigurationError, match=r"Unfingerprintable\.snapshot_schema"):
        PersistedEventStore(repository, Unfingerprintable, snapshot_every=3)
    PersistedEventStore(repository, Unfingerprintable)  # no snapshots: nothing to fingerprint

    @dataclass
    class EmptySchema(LedgerV1):
        snapshot_schema: ClassVar[str | None] = ""

    with pytest.raises(ConfigurationError, match="snapshot_schema must be a non-empty string"):
        PersistedEventStore(repository, EmptySchema, snapshot_every=3)


def _row(sequence: int, event: object) -> SerializedEvent:
    return SerializedEvent(
        "Ledger",
        "l",
        sequence,
        event_type_of(type(event)),
        "1.0",
        default_codec.encode(event),
        b"{}",
        datetime.now(UTC),
        uuid4(),
    )
