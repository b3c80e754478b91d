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


async def test_stream_all_events_reads_bounded_position_windows(url, prefix, monkeypatch):
    monkeypatch.setattr(cqrs_mongodb.repository, "PAGE_SIZE", 4)
    listener = _Finds()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(url, event_listeners=[listener])
    try:
        repository = MongoEventRepository(
            client, events_collection=f"{prefix}_events", snapshots_collection=f"{prefix}_snaps"
        )
        async with repository:
            await repository.create_schema()
            cqrs = mongodb_cqrs(repository, Ledger)
            for _ in range(10):
                await cqrs.execute("L1", ODD_VALUES[0])
            listener.commands.clear()
            streamed = [e.position async for e in repository.stream_all_events(None, 0)]
            windows = list(listener.commands)
            listener.commands.clear()
            by_aggregate = [e.sequence async for e in repository.stream_events("Ledger", "L1")]
    finally:
        await client.close()
        await FACTORY.cleanup(Path(), prefix)
    assert streamed == sorted(streamed)
    assert len(streamed) == 10
    assert by_aggregate == list(range(1, 11))
    assert [c["filter"]["_id"]["$gt"] for c in windows] == [0, streamed[3], streamed[7]]
    assert all(c["limit"] == 4 and c["sort"] == {"_id": 1} for c in windows)
    assert all(c["readConcern"] == {"level": "majority"} for c in windows)  # survives failover
    assert all("find" in c for c in windows + listener.commands)  # no open cursor
    assert len(listener.commands) == 3  # 4 + 4 + 2 by sequence, each one bounded find


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


async def test_a_group_whose_commit_outcome_is_unknown_is_never_reported_as_a_conflict(
    repository, monkeypatch
):
    # A commitTransaction that times out (or loses its write concern) may have committed.
    # Retrying the group's commits one by one would then hit their own stored events and
    # report AggregateConflict for commits that are stored: a retrying caller would run its
    # command twice. Every commit of the group must get DatabaseConnectionError (outcome
    # unknown), exactly as a single commit does.
    committer = repository._committer
    real = type(committer)._transaction
    calls = []

    async def commit_then_lose_the_answer(self, group):
        starts = await real(self, group)
        calls.append(len(group))
        if len(calls) == 1:
            raise ExecutionTimeout(
                "operation exceeded time limit",
                50,
                {
                    "errmsg": "operation exceeded time limit",
                    "code": 50,
                    "errorLabels": ["UnknownTransactionCommitResult"],
                },
            )
        return starts

    monkeypatch.setattr(type(committer), "_transaction", commit_then_lose_the_answer)
    outcomes = await asyncio.gather(
        *(repository.persist(batch(f"u{n}", 1, 2), None) for n in range(4)),
        return_exceptions=True,
    )
    assert calls[0] > 1  # the commits shared one transaction
    assert not [o for o in outcomes if isinstance(o, AggregateConflict)], outcomes
    assert all(isinstance(o, DatabaseConnectionError) for o in outcomes), outcomes
    stored = [(e.aggregate_id, e.sequence) async for e in repository.stream_all_events(None)]
    assert sorted(stored) == [(f"u{n}", s) for n in range(4) for s in (1, 2)]


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


async def test_using_a_repository_before_open_is_a_clear_error(url):
    repository = from_url(url)
    with pytest.raises(ConfigurationError, match="not open"):
        await repository.get_events("Ledger", "x")
    views = repository.view_repository(Record, "views")
    with pytest.raises(ConfigurationError, match="not open"):
        await views.load("x")


class AsyncIOMotorClient:
    """Stands in for motor.motor_asyncio.AsyncIOMotorClient (Motor is not installed)."""


AsyncIOMotorClient.__module__ = "motor.motor_asyncio"


def test_a_motor_client_is_refused_with_what_to_pass_instead():
    motor = AsyncIOMotorClient()
    with pytest.raises(ConfigurationError, match=r"Motor.*Pass a pymongo\.AsyncMongoClient"):
        MongoEventRepository(motor)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"pymongo\.AsyncMongoClient"):
        MongoViewRepository(motor, Record)  # type: ignore[arg-type]


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
    views = MongoViewRepository(client, Record, f"{prefix}_views", database=DATABASE)
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
