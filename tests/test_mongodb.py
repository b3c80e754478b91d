"""What only the MongoDB backend has: its client checks, its replica-set requirement, its
document layout and its paged reads. The shared behaviour is in tests/conformance.

The server is the one named by CQRS_TEST_MONGODB_URL (the nox session starts a SecantusDB
test server). The standalone-server test starts its own ``secantusd-py --standalone`` on a
free port and stops it by its process id; it finds the binary through CQRS_TEST_SECANTUSD,
then PATH, then the nox session's virtualenv. Motor is not installed (and must not be): a
stand-in class with Motor's module and class name shows the error a Motor client gets.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import shutil
import socket
import subprocess
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import pytest
from backends_under_test.mongodb import FACTORY, database_url
from msgspec.structs import replace
from pymongo import AsyncMongoClient, MongoClient, monitoring
from pymongo.errors import ExecutionTimeout, PyMongoError

import cqrs_mongodb
import cqrs_mongodb.repository
from cqrs import (
    Aggregate,
    AggregateConflict,
    ConfigurationError,
    DatabaseConnectionError,
    DeserializationError,
    DomainEvent,
    NotOpenError,
    SerializedEvent,
    SerializedSnapshot,
    UnexpectedError,
    ViewContext,
    connect,
    default_codec,
)
from cqrs_mongodb import (
    MongoEventRepository,
    MongoViewRepository,
    from_url,
    mongodb_aggregate_cqrs,
    mongodb_cqrs,
    mongodb_snapshot_cqrs,
)

ROOT = Path(__file__).resolve().parent.parent
REQUIRED = "mongodb" in os.environ.get("CQRS_TEST_REQUIRE", "").split(",")
DATABASE = "cqrs_test"


def _unusable(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"mongodb is required (CQRS_TEST_REQUIRE) but {reason}")
    pytest.skip(f"mongodb: {reason}")


@pytest.fixture
async def url() -> str:
    reason = await FACTORY.unavailable()
    if reason is not None:
        _unusable(reason)
    found = database_url()
    assert found is not None
    return found


@pytest.fixture
def prefix() -> str:
    return f"m{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def client(url: str, prefix: str) -> AsyncIterator[AsyncMongoClient[dict[str, Any]]]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(url)
    try:
        yield client
    finally:
        await client.close()
        await FACTORY.cleanup(Path(), prefix)


@pytest.fixture
async def repository(client, prefix: str) -> AsyncIterator[MongoEventRepository]:
    repository = MongoEventRepository(
        client, events_collection=f"{prefix}_events", snapshots_collection=f"{prefix}_snaps"
    )
    async with repository:
        await repository.create_schema()
        yield repository


def event(aggregate_id: str, sequence: int, payload: object = None) -> SerializedEvent:
    return SerializedEvent(
        "Thing",
        aggregate_id,
        sequence,
        "ThingHappened",
        "1.0",
        default_codec.encode({"n": sequence} if payload is None else payload),
        b"{}",
        datetime.now(UTC),
        uuid.uuid4(),
    )


def batch(aggregate_id: str, first: int, count: int) -> list[SerializedEvent]:
    return [event(aggregate_id, first + i) for i in range(count)]


# -- a domain with every value type the codec must keep exact -------------------------------


@dataclass(frozen=True)
class Recorded(DomainEvent):
    amount: Decimal
    at: datetime
    ref: uuid.UUID
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Record:
    amount: Decimal
    at: datetime
    ref: uuid.UUID


@dataclass
class Ledger(Aggregate[Record, Recorded, None]):
    aggregate_type: ClassVar[str] = "Ledger"
    event_classes: ClassVar[Sequence[type[object]]] = (Recorded,)
    entries: list[Recorded] = field(default_factory=list)

    async def handle(self, command: Record, services: None) -> Sequence[Recorded]:
        return [Recorded(command.amount, command.at, command.ref, ("a", "b"))]

    def apply(self, event: Recorded) -> None:
        self.entries.append(event)


ODD_VALUES = [
    Record(
        Decimal("12345678901234567890.123456789"),
        datetime(2024, 2, 29, 23, 59, 59, 999_999, tzinfo=UTC),
        uuid.UUID("00000000-0000-0000-0000-000000000001"),
    ),
    Record(
        Decimal("-0.000000000000000000001"),
        datetime(1969, 12, 31, 23, 59, 59, 1, tzinfo=timezone(timedelta(hours=-5, minutes=-30))),
        uuid.uuid4(),
    ),
    Record(Decimal("1E+30"), datetime(9999, 12, 31, tzinfo=UTC), uuid.uuid4()),
]


@pytest.mark.parametrize("make", [mongodb_cqrs, mongodb_aggregate_cqrs])
async def test_decimal_datetime_and_uuid_round_trip_exactly(repository, make):
    cqrs = make(repository, Ledger)
    committed = [await cqrs.execute("L1", record) for record in ODD_VALUES]
    loaded = await cqrs.store.load_events("L1")
    assert [e.payload for e in loaded] == [envelope[0].payload for envelope in committed]
    for record, event in zip(ODD_VALUES, loaded, strict=True):
        assert str(event.payload.amount) == str(record.amount)  # same digits and exponent
        assert event.payload.at.utcoffset() == record.at.utcoffset()
    state = (await cqrs.store.load_aggregate("L1")).aggregate
    assert state.entries == [e.payload for e in loaded]


async def test_envelope_timestamps_and_ids_round_trip_to_the_microsecond(repository):
    cqrs = mongodb_snapshot_cqrs(repository, Ledger, [], 2)
    committed = [(await cqrs.execute("L1", record))[0] for record in ODD_VALUES]
    loaded = await cqrs.store.load_events("L1")
    assert [(e.timestamp, e.event_id, e.position) for e in loaded] == [
        (e.timestamp, e.event_id, e.position) for e in committed
    ]
    assert all(e.timestamp.tzinfo is not None for e in loaded)


async def test_documents_have_the_documented_layout(repository, client, prefix):
    cqrs = mongodb_snapshot_cqrs(repository, Ledger, [], 1)
    [envelope] = await cqrs.execute_with_metadata("L1", ODD_VALUES[0], {"user": "ann"})
    database = client[DATABASE]
    document = await database[f"{prefix}_events"].find_one({})
    assert document is not None
    assert document["_id"] == envelope.position
    assert (document["aggregate_type"], document["aggregate_id"], document["sequence"]) == (
        "Ledger",
        "L1",
        1,
    )
    assert isinstance(document["payload"], str)  # the codec's JSON text, exactly
    assert default_codec.decode(document["payload"], Recorded) == envelope.payload
    assert document["metadata"] == '{"user":"ann"}'
    assert document["timestamp_us"] == envelope.timestamp.microsecond % 1000
    counter = await database["counters"].find_one({"_id": f"{prefix}_events"})
    assert counter == {"_id": f"{prefix}_events", "position": envelope.position}
    snapshot = await database[f"{prefix}_snaps"].find_one({})
    assert snapshot is not None
    assert (snapshot["last_sequence"], snapshot["current_snapshot"]) == (1, 1)
    names = {
        index["name"]
        for index in await (await database[f"{prefix}_events"].list_indexes()).to_list()
    }
    assert {"aggregate_sequence", "type_position"} <= names


# -- paged reads -----------------------------------------------------------------------------


class _Finds(monitoring.CommandListener):
    def __init__(self) -> None:
        self.commands: list[dict[str, Any]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name in ("find", "getMore"):
            self.commands.append(dict(event.command))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


async def test_stream_all_events_reads_bounded_position_windows(url, prefix):
    listener = _Finds()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(url, event_listeners=[listener])
    try:
        repository = MongoEventRepository(
            client,
            events_collection=f"{prefix}_events",
            snapshots_collection=f"{prefix}_snaps",
            page_size=4,
        )
        async with repository:
            await repository.create_schema()
            cqrs = mongodb_cqrs(repository, Ledger)
            for _ in range(10):  # another aggregate's events between each of L1's
                await cqrs.execute("L1", ODD_VALUES[0])
                await cqrs.execute("L2", ODD_VALUES[1])
            listener.commands.clear()
            streamed = [e.position async for e in repository.stream_all_events(None, 0)]
            windows = list(listener.commands)
            listener.commands.clear()
            by_aggregate = [e.sequence async for e in repository.stream_events("Ledger", "L1")]
    finally:
        await client.close()
        await FACTORY.cleanup(Path(), prefix)
    assert streamed == list(range(1, 21))
    assert by_aggregate == list(range(1, 11))  # every event once, though positions run ahead
    assert [c["filter"]["_id"]["$gt"] for c in windows] == [0, 4, 8, 12, 16, 20]
    assert all(c["limit"] == 4 and c["sort"] == {"_id": 1} for c in windows)
    assert all(c["readConcern"] == {"level": "majority"} for c in windows)  # survives failover
    assert all("find" in c for c in windows + listener.commands)  # no open cursor
    assert [c["filter"]["sequence"]["$gt"] for c in listener.commands] == [0, 4, 8]


@pytest.mark.parametrize("page_size", [0, -1, 1.5, True, "10"])
def test_page_size_must_be_a_positive_int(page_size):
    with pytest.raises(ConfigurationError, match="page_size"):
        from_url("mongodb://h/db", page_size=page_size)


def test_page_size_is_kept_by_with_collections():
    repository = from_url("mongodb://h/db", page_size=7)
    assert repository.page_size == 7
    assert repository.with_tables("e2", "s2").page_size == 7
    assert MongoEventRepository("mongodb://h/db").page_size == cqrs_mongodb.repository.PAGE_SIZE


class _FindCommands(_Finds):
    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "find":
            self.commands.append(dict(event.command))


def _stages(plan: dict[str, Any]) -> list[dict[str, Any]]:
    children = [plan.get("inputStage"), *plan.get("inputStages", ())]
    return [plan, *(s for child in children if child for s in _stages(child))]


async def test_the_type_filtered_stream_is_served_by_the_type_position_index(url, prefix):
    listener = _FindCommands()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(url, event_listeners=[listener])
    try:
        repository = MongoEventRepository(client, events_collection=f"{prefix}_events", page_size=5)
        async with repository:
            await repository.create_schema()
            for n in range(6):
                await repository.persist(batch(f"t{n}", 1, 3), None)
                await repository.persist([replace(event(f"o{n}", 1), aggregate_type="Other")], None)
            listener.commands.clear()
            streamed = [e async for e in repository.stream_all_events("Thing", 2)]
            find = listener.commands[0]
            query = {key: find[key] for key in ("find", "filter", "sort", "limit")}
            explained = await client[DATABASE].command(
                {"explain": query, "verbosity": "queryPlanner"}
            )
    finally:
        await client.close()
        await FACTORY.cleanup(Path(), prefix)
    assert len(streamed) == 16
    assert query["filter"] == {"aggregate_type": "Thing", "_id": {"$gt": 2}}
    stages = _stages(explained["queryPlanner"]["winningPlan"])
    scans = [s for s in stages if s["stage"].endswith("SCAN")]
    assert [(s["stage"], s.get("indexName")) for s in scans] == [("IXSCAN", "type_position")]
    if explained.get("serverInfo", {}).get("host") != "secantus":
        # MongoDB reads the index in _id order within the type: no in-memory sort. The test
        # server SecantusDB always plans a SORT stage after an index scan, so there it is
        # only checked that the index is used.
        assert "SORT" not in [s["stage"] for s in stages]


# -- errors ----------------------------------------------------------------------------------


async def test_concurrent_first_commits_give_one_winner_and_conflicts_not_retries(url, prefix):
    # Four repositories with their own clients stand for four processes (conflicts found
    # by the server's unique index), two writers each (conflicts found in the group).
    repositories = [
        from_url(url).with_tables(f"{prefix}_events", f"{prefix}_snaps") for _ in range(4)
    ]
    for repository in repositories:
        await repository.open()
    await repositories[0].create_schema()

    async def attempt(repository: MongoEventRepository, n: int) -> str:
        try:
            await repository.persist([event("hot", 1, payload={"n": n})], None)
        except AggregateConflict as error:
            return f"conflict from {type(error.__cause__).__name__}"
        return "stored"

    started = time.monotonic()
    try:
        outcomes = await asyncio.gather(*(attempt(r, n) for n in range(2) for r in repositories))
    finally:
        for repository in repositories:
            await repository.close()
        await FACTORY.cleanup(Path(), prefix)
    assert time.monotonic() - started < 30
    assert outcomes.count("stored") == 1
    assert outcomes.count("conflict from BulkWriteError") >= 3
    assert len([o for o in outcomes if o.startswith("conflict")]) == 7


class _Commands(monitoring.CommandListener):
    def __init__(self, name: str) -> None:
        self.name = name
        self.count = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.count += event.command_name == self.name

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


async def test_concurrent_commits_share_transactions_and_keep_their_own_outcome(
    url, prefix, client
):
    commits = _Commands("commitTransaction")
    watched: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(url, event_listeners=[commits])
    repository = MongoEventRepository(
        watched, events_collection=f"{prefix}_events", snapshots_collection=f"{prefix}_snaps"
    )
    try:
        async with repository:
            await repository.create_schema()
            await repository.persist(batch("taken", 1, 2), None)
            commits.count = 0
            shared = await asyncio.gather(
                *(repository.persist(batch(f"s{n}", 1, 3), None) for n in range(8))
            )
            transactions = commits.count
            too_big = event("big", 1, payload={"blob": "x" * (17 * 1024 * 1024)})
            requests = [
                *(batch(f"a{n}", 1, 3) for n in range(4)),
                [event("taken", 2)],  # a stored sequence
                [too_big],  # larger than a BSON document may be
            ]
            snapshots = [SerializedSnapshot("Thing", "a0", b'{"v":3}', 3, 1)] + [None] * 5
            outcomes = await asyncio.gather(
                *(repository.persist(r, s) for r, s in zip(requests, snapshots, strict=True)),
                return_exceptions=True,
            )
            stored = [e.position async for e in repository.stream_all_events(None)]
            snapshot = await repository.get_snapshot("Thing", "a0")
    finally:
        await watched.close()
    assert transactions < 8  # eight commits, fewer transactions
    assert sorted(p for positions in shared for p in positions) == stored[2:26]
    good = outcomes[:4]
    assert all(isinstance(p, list) and len(p) == 3 for p in good), outcomes
    assert sorted(p for positions in good for p in positions) == stored[26:]  # type: ignore[union-attr]
    assert isinstance(outcomes[4], AggregateConflict)
    assert isinstance(outcomes[5], UnexpectedError)
    assert "'big'" in str(outcomes[5])
    assert snapshot is not None
    assert snapshot.last_sequence == 3


async def test_a_sequence_this_process_stored_conflicts_without_a_transaction(url, prefix):
    transactions = _Commands("findAndModify")
    watched: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        url, event_listeners=[transactions]
    )
    repository = MongoEventRepository(
        watched, events_collection=f"{prefix}_events", snapshots_collection=f"{prefix}_snaps"
    )
    try:
        async with repository:
            await repository.create_schema()
            await repository.persist(batch("a1", 1, 3), None)
            await repository.persist(batch("a1", 4, 1), None)
            before = transactions.count
            with pytest.raises(AggregateConflict, match="sequence 2 is already stored"):
                await repository.persist(batch("a1", 2, 2), None)
            assert transactions.count == before  # known to conflict: no transaction ran
            await repository.persist(batch("a1", 5, 1), None)
            assert [e.sequence for e in await repository.get_events("Thing", "a1")] == [
                1,
                2,
                3,
                4,
                5,
            ]
    finally:
        await watched.close()
        await FACTORY.cleanup(Path(), prefix)


def _unknown_outcome() -> ExecutionTimeout:
    """What a commitTransaction that timed out raises: the transaction may have committed."""
    return ExecutionTimeout(
        "operation exceeded time limit",
        50,
        {
            "errmsg": "operation exceeded time limit",
            "code": 50,
            "errorLabels": ["UnknownTransactionCommitResult"],
        },
    )


def _lose_answers(monkeypatch, repository, *, commit: bool, times: int) -> list[int]:
    """Make the first ``times`` transactions of ``repository`` end with an unknown outcome,
    after committing (``commit``) or without; return the sizes of the groups tried."""
    committer = repository._committer
    real = type(committer)._transaction
    calls: list[int] = []

    async def lose_the_answer(self, group):
        calls.append(len(group))
        if len(calls) > times:
            return await real(self, group)
        if commit:
            await real(self, group)
        raise _unknown_outcome()

    monkeypatch.setattr(type(committer), "_transaction", lose_the_answer)
    return calls


async def test_a_group_whose_outcome_is_unknown_but_stored_succeeds_by_its_event_ids(
    repository, monkeypatch
):
    # A commitTransaction that times out may have committed. The group's commits are read
    # back: found stored by their event ids, they succeed with their positions, stored once
    # (neither DatabaseConnectionError, which makes a caller retry a stored command, nor a
    # conflict with themselves).
    await repository.persist(batch("u0", 1, 1), None)
    calls = _lose_answers(monkeypatch, repository, commit=True, times=1)
    requests = [batch("u0", 2, 2), *(batch(f"u{n}", 1, 2) for n in range(1, 4))]
    outcomes = await asyncio.gather(
        *(repository.persist(r, None) for r in requests), return_exceptions=True
    )
    assert calls == [4]  # the four commits shared one transaction, found stored: no retry
    stored = [e async for e in repository.stream_all_events(None)]
    assert len(stored) == 9
    by_id = {str(e.event_id): e.position for e in stored}
    assert outcomes == [[by_id[str(e.event_id)] for e in r] for r in requests]


async def test_a_group_whose_outcome_is_unknown_and_not_stored_is_retried_once(
    repository, monkeypatch
):
    calls = _lose_answers(monkeypatch, repository, commit=False, times=1)
    requests = [batch(f"u{n}", 1, 2) for n in range(4)]
    outcomes = await asyncio.gather(*(repository.persist(r, None) for r in requests))
    assert calls == [4, 4]
    stored = [e async for e in repository.stream_all_events(None)]
    assert [str(e.event_id) for e in stored] == [str(e.event_id) for r in requests for e in r]
    assert outcomes == [[1, 2], [3, 4], [5, 6], [7, 8]]


async def test_a_group_whose_outcome_stays_unknown_fails_with_connection_errors_only(
    repository, monkeypatch
):
    calls = _lose_answers(monkeypatch, repository, commit=False, times=2)
    outcomes = await asyncio.gather(
        *(repository.persist(batch(f"u{n}", 1, 2), None) for n in range(4)),
        return_exceptions=True,
    )
    assert calls == [4, 4]  # one retry, no more
    assert all(isinstance(o, DatabaseConnectionError) for o in outcomes), outcomes
    assert [e async for e in repository.stream_all_events(None)] == []
    assert await repository.persist(batch("u0", 1, 2), None) == [1, 2]  # and then it works


class _Transactions(monitoring.CommandListener):
    """Counts committed transactions and the reads run inside transactions."""

    def __init__(self) -> None:
        self.commits = 0
        self.reads_in_transactions = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.commits += event.command_name == "commitTransaction"
        in_transaction = "txnNumber" in event.command and "autocommit" in event.command
        self.reads_in_transactions += event.command_name == "find" and in_transaction

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@contextlib.asynccontextmanager
async def _two_clients(
    url: str, prefix: str, *listeners: monitoring.CommandListener
) -> AsyncIterator[tuple[MongoEventRepository, MongoEventRepository]]:
    """Two repositories on the same collections, each with a client of its own (two
    processes, as far as the in-process group commit can tell)."""
    clients: list[AsyncMongoClient[dict[str, Any]]] = [
        AsyncMongoClient(url, event_listeners=list(listeners)),
        AsyncMongoClient(url),
    ]
    repositories = [
        MongoEventRepository(
            client, events_collection=f"{prefix}_events", snapshots_collection=f"{prefix}_snaps"
        )
        for client in clients
    ]
    try:
        for repository in repositories:
            await repository.open()
        await repositories[0].create_schema()
        yield repositories[0], repositories[1]
    finally:
        for repository in repositories:
            await repository.close()
        for client in clients:
            await client.close()
        await FACTORY.cleanup(Path(), prefix)


def _snapshot(aggregate_id: str, last_sequence: int) -> SerializedSnapshot:
    return SerializedSnapshot("Thing", aggregate_id, b'{"v":1}', last_sequence, 1)


async def test_in_a_group_a_gapped_or_stale_commit_fails_alone_and_stores_no_snapshot(url, prefix):
    # The other client stored g 1 and taken 1..2; this client knows nothing of them, so only
    # the database can refuse its commits. One group: four good commits with snapshots, g
    # 3..4 (sequence 2 missing), fresh 2 (a new aggregate starts at 1) and taken 2..3 (a
    # stored sequence). The refused commits store neither events nor snapshot; the good ones
    # are committed together, their snapshots with them.
    transactions = _Transactions()
    async with _two_clients(url, prefix, transactions) as (repository, other):
        await other.persist(batch("g", 1, 1), None)
        await other.persist(batch("taken", 1, 2), None)
        requests = [
            *((batch(f"a{n}", 1, 3), _snapshot(f"a{n}", 3)) for n in range(4)),
            (batch("g", 3, 2), _snapshot("g", 4)),
            (batch("fresh", 2, 1), _snapshot("fresh", 2)),
            (batch("taken", 2, 2), _snapshot("taken", 3)),
        ]
        transactions.commits = transactions.reads_in_transactions = 0
        outcomes = await asyncio.gather(
            *(repository.persist(r, s) for r, s in requests), return_exceptions=True
        )
        stored = {(e.aggregate_id, e.sequence) async for e in repository.stream_all_events("Thing")}
        snapshots = {
            name: await repository.get_snapshot("Thing", name)
            for name in ("a0", "a1", "a2", "a3", "g", "fresh", "taken")
        }
    assert all(isinstance(o, list) for o in outcomes[:4]), outcomes
    assert all(isinstance(o, AggregateConflict) for o in outcomes[4:]), outcomes
    assert "gap" in str(outcomes[4])
    assert "gap" in str(outcomes[5])
    assert stored == {("g", 1), ("taken", 1), ("taken", 2)} | {
        (f"a{n}", s) for n in range(4) for s in (1, 2, 3)
    }
    assert all(snapshots[f"a{n}"] is not None for n in range(4))
    assert snapshots["g"] is None
    assert snapshots["fresh"] is None
    assert snapshots["taken"] is None
    # One committed transaction for the whole group (the duplicate key aborted a first try);
    # in each try, one read per commit that does not start at 1: g, fresh and taken, then
    # g and fresh.
    assert transactions.commits == 1
    assert transactions.reads_in_transactions == 3 + 2


async def test_previous_sequences_this_process_stored_or_read_cost_no_read(url, prefix):
    transactions = _Transactions()
    async with _two_clients(url, prefix, transactions) as (repository, other):
        for name in ("a", "c", "d"):
            await other.persist(batch(name, 1, 2), None)
        transactions.commits = 0
        await repository.persist(batch("a", 3, 2), None)  # reads whether sequence 2 is stored
        await repository.persist(batch("a", 5, 1), None)  # knows it stored sequence 4
        await repository.persist(batch("b", 1, 1), None)  # starts at 1: nothing to read
        await repository.persist(batch("b", 2, 1), None)
        assert transactions.reads_in_transactions == 1
        # A command loads before it commits: what it loaded is known to be stored.
        assert len(await repository.get_events("Thing", "c")) == 2
        await repository.persist(batch("c", 3, 1), None)
        assert len(await repository.get_last_events("Thing", "d", 1)) == 1
        await repository.persist(batch("d", 3, 1), None)
        assert transactions.reads_in_transactions == 1
        await other.persist(batch("d", 4, 1), None)  # behind this process's back
        with pytest.raises(AggregateConflict):  # stale: the unique index refuses it
            await repository.persist(batch("d", 4, 1), None)
    assert transactions.commits == 6


async def test_a_retried_commit_is_recognized_by_its_event_ids_on_every_path(url, prefix):
    transactions = _Transactions()
    async with _two_clients(url, prefix, transactions) as (repository, other):
        rows = batch("r", 1, 3)
        positions = await repository.persist(rows, _snapshot("r", 3))
        # This process knows it stored them: read back without a transaction.
        before = transactions.commits
        assert await repository.persist(rows, _snapshot("r", 3)) == positions
        assert await repository.persist(rows[1:], None) == positions[1:]
        assert transactions.commits == before
        # Another client only learns it from the duplicate key, inside a group whose other
        # commits are stored as usual.
        outcomes = await asyncio.gather(
            other.persist(rows, None),
            other.persist(batch("s", 1, 2), None),
            other.persist(batch("r", 2, 2), None),  # other ids at stored sequences
            return_exceptions=True,
        )
        stored = [(e.aggregate_id, e.sequence) async for e in other.stream_all_events(None)]
    assert outcomes[0] == positions
    assert outcomes[1] == [4, 5]
    assert isinstance(outcomes[2], AggregateConflict)
    assert stored == [("r", 1), ("r", 2), ("r", 3), ("s", 1), ("s", 2)]


async def test_two_clients_writing_one_sequence_leave_it_to_the_unique_index(url, prefix, client):
    # Neither the group commit's knowledge of stored sequences nor the gap check can refuse
    # a second client's stale commit: only the unique index on (aggregate_type,
    # aggregate_id, sequence) can. With it missing, both would be stored.
    async with _two_clients(url, prefix) as (first, second):
        indexes = await (await client[DATABASE][f"{prefix}_events"].list_indexes()).to_list()
        [unique] = [i for i in indexes if i["name"] == "aggregate_sequence"]
        assert unique.get("unique") is True
        await first.persist(batch("hot", 1, 2), None)
        with pytest.raises(AggregateConflict):
            await second.persist(batch("hot", 2, 1), None)  # stale; sequence 1 is stored
        with pytest.raises(AggregateConflict):
            await second.persist(batch("hot", 1, 1), None)
        for sequence in range(3, 6):
            outcomes = await asyncio.gather(
                first.persist([event("hot", sequence)], None),
                second.persist([event("hot", sequence)], None),
                return_exceptions=True,
            )
            assert sorted(type(o).__name__ for o in outcomes) == ["AggregateConflict", "list"]
        stored = [e.sequence for e in await second.get_events("Thing", "hot")]
    assert stored == [1, 2, 3, 4, 5]


async def test_a_counter_behind_the_events_is_not_reported_as_a_conflict(
    repository, client, prefix
):
    # A counter document reset or restored from an older backup hands out positions that
    # are taken. That is no concurrent writer: AggregateConflict would send a retrying
    # caller round the same failure, told that another writer won. It must be an
    # UnexpectedError naming the counter, and store nothing.
    await repository.persist(batch("a", 1, 2), None)
    await client[DATABASE]["counters"].update_one(
        {"_id": f"{prefix}_events"}, {"$set": {"position": 0}}
    )
    for requests in ([batch("b", 1, 1)], [batch("c", 1, 1), batch("d", 1, 1)]):
        outcomes = await asyncio.gather(
            *(repository.persist(r, None) for r in requests), return_exceptions=True
        )
        assert all(isinstance(o, UnexpectedError) for o in outcomes), outcomes
        assert all("counters" in str(o) for o in outcomes), outcomes
    stored = [(e.aggregate_id, e.sequence) async for e in repository.stream_all_events(None)]
    assert stored == [("a", 1), ("a", 2)]


async def test_malformed_event_document_raises_deserialization_error(repository, client, prefix):
    await client[DATABASE][f"{prefix}_events"].insert_one(
        {"_id": 99, "aggregate_type": "Ledger", "aggregate_id": "bad", "sequence": 1}
    )
    with pytest.raises(DeserializationError, match="position 99"):
        await repository.get_events("Ledger", "bad")


async def test_unreachable_server_is_a_connection_error():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    repository = from_url(f"mongodb://127.0.0.1:{port}/x?serverSelectionTimeoutMS=200")
    with pytest.raises(DatabaseConnectionError) as caught:
        await repository.open()
    assert isinstance(caught.value.__cause__, PyMongoError)
    # PyMongo 4.20's server monitor can leave the socket of a refused connection unclosed,
    # reachable from the error's traceback: collect it here, not in a later test.
    del caught
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        await repository.close()
        gc.collect()


async def _refuses_everything(repository: MongoEventRepository, sent: list[str]) -> None:
    views = repository.view_repository(Record, "views")
    calls = [
        repository.create_schema,
        lambda: repository.get_events("Ledger", "x"),
        lambda: repository.get_last_events("Ledger", "x", 0),
        lambda: repository.get_snapshot("Ledger", "x"),
        lambda: repository.persist(batch("x", 1, 1), None),
        lambda: anext(repository.stream_events("Ledger", "x")),
        lambda: anext(repository.stream_all_events(None)),
        lambda: anext(repository.stream_all_events("Ledger", 3)),
        views.create_schema,
        lambda: views.load("x"),
        lambda: views.load_with_context("x"),
        lambda: views.update_view(ODD_VALUES[0], ViewContext("x", 0)),
    ]
    for call in calls:
        with pytest.raises(NotOpenError, match=r"MongoEventRepository\(.*\) is not open"):
            await call()
    assert sent == []  # refused before any I/O


async def test_every_method_before_open_and_after_close_raises_not_open(url, prefix):
    sent: list[str] = []
    listener = _Commands("")
    listener.started = lambda event: sent.append(event.command_name)  # type: ignore[method-assign]
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(url, event_listeners=[listener])
    try:
        for n, repository in enumerate(
            (
                from_url(url).with_tables(f"{prefix}_events", f"{prefix}_snaps"),
                MongoEventRepository(client, events_collection=f"{prefix}_events"),
            )
        ):
            await _refuses_everything(repository, sent)
            async with repository:
                await repository.create_schema()
                await repository.persist(batch(f"x{n}", 1, 1), None)
            sent.clear()
            await _refuses_everything(repository, sent)
            await repository.close()  # idempotent
            async with repository:  # and it opens again
                assert len(await repository.get_events("Thing", f"x{n}")) == 1
    finally:
        await client.close()
        await FACTORY.cleanup(Path(), prefix)


class AsyncIOMotorClient:
    """Stands in for motor.motor_asyncio.AsyncIOMotorClient (Motor is not installed)."""


AsyncIOMotorClient.__module__ = "motor.motor_asyncio"


def test_a_motor_client_is_refused_with_what_to_pass_instead():
    motor = AsyncIOMotorClient()
    with pytest.raises(ConfigurationError, match=r"Motor.*Pass a pymongo\.AsyncMongoClient"):
        MongoEventRepository(motor)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"pymongo\.AsyncMongoClient"):
        MongoViewRepository(Record, "views", motor)  # type: ignore[arg-type]


def test_a_synchronous_client_is_refused():
    client: MongoClient[dict[str, Any]] = MongoClient(connect=False)
    try:
        with pytest.raises(ConfigurationError, match=r"pymongo\.AsyncMongoClient"):
            MongoEventRepository(client)  # type: ignore[arg-type]
    finally:
        client.close()


@pytest.mark.parametrize(
    ("url", "database"),
    [
        ("mongodb://h/?replicaSet=rs0", "cqrs"),
        ("mongodb://h", "cqrs"),
        ("mongodb://u:p@h1:27017,h2:27018/app_db?replicaSet=rs0", "app_db"),
        ("mongodb+srv://cluster.example.com/bank", "bank"),
    ],
)
def test_from_url_takes_the_database_from_the_path(url, database):
    repository = from_url(url)
    assert f"database={database!r}" in repr(repository)
    assert repository.events_collection == "events"


@pytest.mark.parametrize("url", ["mongodb://h/a.b", "mongodb://h/has%20space", "mongodb://h/$x"])
def test_from_url_rejects_invalid_database_names(url):
    with pytest.raises(ConfigurationError, match="invalid database name"):
        from_url(url)


def test_with_collections_validates_and_keeps_the_rest(url):
    repository = from_url(url).with_collections(events="e1", counters="c1")
    assert (
        repository.events_collection,
        repository.snapshots_collection,
        repository.counters_collection,
    ) == ("e1", "snapshots", "c1")
    with pytest.raises(ConfigurationError, match="invalid collection name"):
        repository.with_collections(snapshots="a.b")


async def test_connect_opens_the_database_named_in_the_url(url, client, prefix):
    own_database = urlsplit(url)._replace(path=f"/{prefix}").geturl()
    try:
        async with connect(own_database) as repository:
            assert isinstance(repository, MongoEventRepository)
            assert repository.database.name == prefix
            assert await repository.get_events("Ledger", "x") == []
        assert {"events", "snapshots", "counters"} <= set(
            await client[prefix].list_collection_names()
        )
    finally:
        await client.drop_database(prefix)


async def test_view_repository_on_a_client(client, prefix):
    views = MongoViewRepository(Record, f"{prefix}_views", client, database=DATABASE)
    await views.create_schema()
    await views.create_schema()
    record = ODD_VALUES[1]
    await views.update_view(record, ViewContext("v1", 0))
    loaded = await views.load_with_context("v1")
    assert loaded == (record, ViewContext("v1", 1))
    with pytest.raises(AggregateConflict):
        await views.update_view(record, ViewContext("v1", 0))
    with pytest.raises(AggregateConflict):
        await views.update_view(record, ViewContext("v1", 2))
    await client[DATABASE][f"{prefix}_views"].update_one({"_id": "v1"}, {"$set": {"payload": "{"}})
    with pytest.raises(DeserializationError, match="'v1'"):
        await views.load("v1")


async def test_a_snapshot_with_fewer_events_never_replaces_a_newer_one(repository):
    await repository.persist(batch("s", 1, 5), SerializedSnapshot("Thing", "s", b'{"v":5}', 5, 2))
    await repository.persist(batch("s", 6, 1), SerializedSnapshot("Thing", "s", b'{"v":1}', 1, 3))
    snapshot = await repository.get_snapshot("Thing", "s")
    assert snapshot is not None
    assert (snapshot.payload, snapshot.last_sequence, snapshot.snapshot_version) == (
        '{"v":5}',
        5,
        2,
    )


def test_public_names_are_exported_and_documented():
    assert list(cqrs_mongodb.__all__) == sorted(cqrs_mongodb.__all__)
    for name in cqrs_mongodb.__all__:
        value = getattr(cqrs_mongodb, name)
        assert value.__doc__, f"{name} has no docstring"


# -- a standalone server ---------------------------------------------------------------------


def _secantusd() -> str | None:
    candidates = [
        os.environ.get("CQRS_TEST_SECANTUSD"),
        shutil.which("secantusd-py"),
        str(ROOT / ".nox" / "_secantusdb" / "bin" / "secantusd-py"),
    ]
    return next((c for c in candidates if c and Path(c).is_file()), None)


class _Server:
    """A secantusd-py process of this test's own on a free port, stopped by its pid."""

    def __init__(self, tmp_path: Path, *options: str) -> None:
        server = _secantusd()
        if server is None:
            _unusable("no secantusd-py to start a test server of its own (CQRS_TEST_SECANTUSD)")
            raise AssertionError  # unreachable: _unusable raises
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.command = [server, "--host", "127.0.0.1", "--port", str(self.port), *options]
        self.log_path = tmp_path / f"secantusd-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        await asyncio.to_thread(self._start)

    def _start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return
            assert self.process.poll() is None, self.log_path.read_text()
            assert time.monotonic() < deadline, "the test server did not start"
            time.sleep(0.1)

    def stop(self, *, kill: bool = False) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if kill:
            process.kill()
        else:
            process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.asynccontextmanager
async def _server(tmp_path: Path, *options: str) -> AsyncIterator[_Server]:
    server = _Server(tmp_path, *options)
    try:
        await server.start()
        yield server
    finally:
        server.stop()


async def test_a_standalone_server_is_refused_at_open_saying_why(tmp_path, url):
    async with _server(tmp_path, "--storage-path", ":memory:", "--standalone") as server:
        standalone = f"mongodb://127.0.0.1:{server.port}/cqrs_test?serverSelectionTimeoutMS=5000"
        with pytest.raises(ConfigurationError, match=r"standalone.*replica set") as caught:
            await from_url(standalone).open()
        assert "rs.initiate()" in str(caught.value)
        with pytest.raises(ConfigurationError, match="replica set"):
            await connect(standalone)
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(standalone)
        try:
            repository = MongoEventRepository(client)
            with pytest.raises(ConfigurationError, match="replica set"):
                async with repository:
                    pass
            with pytest.raises(ConfigurationError, match="not open"):
                await repository.get_events("Ledger", "x")
        finally:
            await client.close()


async def test_a_server_restart_is_survived_by_reconnecting(tmp_path, url):
    storage = str(tmp_path / "data")
    async with _server(tmp_path, "--storage-path", storage) as server:
        address = f"mongodb://127.0.0.1:{server.port}/cqrs_test?replicaSet=secantus"
        async with from_url(f"{address}&serverSelectionTimeoutMS=1000") as repository:
            await repository.create_schema()
            await repository.persist(batch("a1", 1, 3), None)
            server.stop()
            with pytest.raises(DatabaseConnectionError):
                await repository.persist(batch("a1", 4, 2), None)
            await server.start()
            await repository.persist(batch("a1", 4, 2), None)
            events = await repository.get_events("Thing", "a1")
    assert [e.sequence for e in events] == [1, 2, 3, 4, 5]
    assert [e.position for e in events] == [1, 2, 3, 4, 5]


async def test_the_first_operation_of_each_kind_after_a_server_restart_succeeds(tmp_path, url):
    # No operation is in flight when the server is killed, so none may fail: the pooled
    # connections are dead, and every kind of read and write must get a fresh one.
    storage = str(tmp_path / "data")
    async with _server(tmp_path, "--storage-path", storage, "--sync-on-commit") as server:
        address = f"mongodb://127.0.0.1:{server.port}/cqrs_test?replicaSet=secantus"
        async with from_url(address) as repository:
            await repository.create_schema()
            views = repository.view_repository(Record, "views")
            await views.create_schema()
            await repository.persist(
                batch("a1", 1, 3), SerializedSnapshot("Thing", "a1", b"{}", 3, 1)
            )
            await views.update_view(ODD_VALUES[0], ViewContext("v1", 0))
            operations = {
                "get_events": lambda: repository.get_events("Thing", "a1"),
                "get_snapshot": lambda: repository.get_snapshot("Thing", "a1"),
                "stream_all_events": lambda: _collect(repository.stream_all_events(None)),
                "view load": lambda: views.load("v1"),
                "view update": lambda: views.update_view(ODD_VALUES[1], ViewContext("v1", 1)),
                "persist": lambda: repository.persist(batch("a1", 4, 2), None),
            }
            results = {}
            for name, operation in operations.items():
                server.stop(kill=True)
                await server.start()
                try:
                    results[name] = await operation()
                except DatabaseConnectionError as error:
                    pytest.fail(f"{name} after a restart: {error}")
            events = await repository.get_events("Thing", "a1")
    assert len(results["get_events"]) == 3
    assert results["get_snapshot"] is not None
    assert len(results["stream_all_events"]) == 3
    assert results["view load"] == ODD_VALUES[0]
    assert results["persist"] == [4, 5]
    assert [e.sequence for e in events] == [1, 2, 3, 4, 5]


async def _collect(iterator: AsyncIterator[SerializedEvent]) -> list[SerializedEvent]:
    return [item async for item in iterator]


@pytest.mark.stress
async def test_a_server_killed_mid_commit_leaves_nothing_partial(tmp_path, url):
    storage = str(tmp_path / "data")
    options = ("--storage-path", storage, "--sync-on-commit")
    async with _server(tmp_path, *options) as server:
        address = f"mongodb://127.0.0.1:{server.port}/cqrs_test?replicaSet=secantus"
        async with from_url(f"{address}&serverSelectionTimeoutMS=2000") as repository:
            await repository.create_schema()
            started = time.monotonic()
            await repository.persist(batch("warm", 1, 300), None)
            duration = time.monotonic() - started
            returned: dict[str, int] = {}
            for round_, fraction in enumerate((0.1, 0.4, 0.7, 0.9, 1.2)):
                aggregate = f"r{round_}"
                commit = asyncio.create_task(repository.persist(batch(aggregate, 1, 300), None))
                await asyncio.sleep(duration * fraction)
                server.stop(kill=True)
                with contextlib.suppress(DatabaseConnectionError):
                    await commit
                    returned[aggregate] = 300
                await server.start()
                stored = await repository.get_events("Thing", aggregate)
                assert len(stored) in (0, 300), f"round {round_}: {len(stored)} of 300 stored"
                if aggregate in returned:
                    assert len(stored) == 300, f"round {round_}: a returned commit was lost"
            positions = [e.position async for e in repository.stream_all_events(None)]
    assert positions == list(range(1, len(positions) + 1))  # gapless after the crashes


# -- wake-ups ----------------------------------------------------------------------------------


async def waited(listener, seconds: float) -> float:
    started = time.monotonic()
    await asyncio.wait_for(listener.wait(seconds), seconds + 10)
    return time.monotonic() - started


async def test_only_committed_transactions_of_its_collection_wake_a_listener(
    repository, client, prefix
):
    other = MongoEventRepository(
        client, events_collection=f"{prefix}_other", snapshots_collection=f"{prefix}_snaps"
    )
    listener = repository.wake_ups()
    async with other:
        await other.create_schema()
        try:
            assert await waited(listener, 30) < 1.0  # opens the stream, returns at once
            waiting = asyncio.create_task(waited(listener, 30))
            await asyncio.sleep(0.2)
            await repository.persist(batch("a", 1, 2), None)
            assert await waiting < 1.0
            with pytest.raises(AggregateConflict):
                await repository.persist(batch("a", 2, 1), None)
            await other.persist(batch("a", 1, 1), None)  # another events collection
            assert await waited(listener, 0.5) >= 0.45
        finally:
            await listener.close()
            await listener.close()


async def test_a_server_that_refuses_change_streams_is_polled_and_said_once(
    repository, monkeypatch, caplog
):
    from pymongo.asynchronous.collection import AsyncCollection  # noqa: PLC0415
    from pymongo.errors import OperationFailure  # noqa: PLC0415

    from cqrs.subscription import Subscription  # noqa: PLC0415

    async def refuse(self, *args, **kwargs):
        raise OperationFailure("The $changeStream stage is only supported on replica sets", 40573)

    monkeypatch.setattr(AsyncCollection, "watch", refuse)
    listeners = [repository.wake_ups(), repository.wake_ups()]
    with caplog.at_level(logging.DEBUG, logger="cqrs.backends.mongodb"):
        for listener in listeners * 2:
            assert 0.15 <= await waited(listener, 0.2) < 2
        subscription = Subscription(repository, poll_interval=0.05)
        try:
            await repository.persist(batch("a", 1, 1), None)
            assert (await asyncio.wait_for(anext(aiter(subscription)), 5)).sequence == 1
        finally:
            await subscription.close()
    for listener in listeners:
        await listener.close()
    records = [r for r in caplog.records if r.name == "cqrs.backends.mongodb"]
    assert [r.levelno for r in records] == [logging.INFO]
    assert "pushed wake-ups are off" in records[0].getMessage()


async def test_a_subscription_is_pushed_to_again_after_a_server_restart(tmp_path, url):
    from cqrs.subscription import Subscription  # noqa: PLC0415

    storage = str(tmp_path / "data")
    async with _server(tmp_path, "--storage-path", storage) as server:
        address = f"mongodb://127.0.0.1:{server.port}/cqrs_test?replicaSet=secantus"
        async with from_url(f"{address}&serverSelectionTimeoutMS=2000") as repository:
            await repository.create_schema()
            subscription = Subscription(repository, poll_interval=0.5)
            delivered: list[SerializedEvent] = []

            async def follow() -> None:
                async for row in subscription:
                    delivered.append(row)  # noqa: PERF401 - it never ends

            async def until(count: int, seconds: float) -> float:
                started = time.monotonic()
                while len(delivered) < count:
                    assert time.monotonic() - started < seconds, f"{len(delivered)} delivered"
                    await asyncio.sleep(0.01)
                return time.monotonic() - started

            following = asyncio.create_task(follow())
            try:
                await asyncio.sleep(0.5)
                await repository.persist(batch("a", 1, 1), None)
                assert await until(1, 5) < 0.4  # pushed
                server.stop()
                await server.start()
                await repository.persist(batch("b", 1, 1), None)
                await until(2, 15)
                await asyncio.sleep(0.5)
                await repository.persist(batch("c", 1, 1), None)
                assert await until(3, 5) < 0.4  # pushed again
            finally:
                following.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await following
                await subscription.close()
    assert [e.aggregate_id for e in delivered] == ["a", "b", "c"]


async def test_a_lost_change_stream_is_reopened_and_logged(repository, monkeypatch, caplog):
    from pymongo.asynchronous.change_stream import AsyncChangeStream  # noqa: PLC0415
    from pymongo.asynchronous.collection import AsyncCollection  # noqa: PLC0415
    from pymongo.errors import AutoReconnect, OperationFailure  # noqa: PLC0415

    try_next, watch = AsyncChangeStream.try_next, AsyncCollection.watch
    faults = {"try_next": 0, "watch": 0}

    async def failing_try_next(self):
        if faults["try_next"]:
            faults["try_next"] -= 1
            raise OperationFailure("Error on remote shard: the change stream is gone", 280)
        return await try_next(self)

    async def failing_watch(self, *args, **kwargs):
        if faults["watch"]:
            faults["watch"] -= 1
            raise AutoReconnect("connection closed")
        return await watch(self, *args, **kwargs)

    monkeypatch.setattr(AsyncChangeStream, "try_next", failing_try_next)
    monkeypatch.setattr(AsyncCollection, "watch", failing_watch)
    listener = repository.wake_ups()
    with caplog.at_level(logging.DEBUG, logger="cqrs.backends.mongodb"):
        try:
            assert await waited(listener, 30) < 1.0  # opened
            faults.update(try_next=1, watch=2)
            assert 0.25 <= await waited(listener, 0.3) < 2  # lost: the timeout stands in
            for _ in range(20):  # reopening fails twice, then works and returns at once
                if await waited(listener, 0.3) < 0.2:
                    break
            assert faults == {"try_next": 0, "watch": 0}
            waiting = asyncio.create_task(waited(listener, 30))
            await asyncio.sleep(0.2)
            await repository.persist(batch("a", 1, 1), None)
            assert await waiting < 1.0  # pushed again
        finally:
            await listener.close()
    records = [r for r in caplog.records if r.name == "cqrs.backends.mongodb"]
    levels = [r.levelno for r in records]
    assert levels == [logging.WARNING, logging.DEBUG, logging.DEBUG, logging.INFO], records
    assert "lost its change stream" in records[0].getMessage()
    assert "reopened its change stream" in records[-1].getMessage()
