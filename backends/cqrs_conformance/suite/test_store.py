"""The event store, snapshots, upcasters and views on every backend."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, ClassVar
from uuid import uuid4

import pytest

from cqrs import (
    Aggregate,
    AggregateConflict,
    ConfigurationError,
    CqrsFramework,
    DeserializationError,
    DomainEvent,
    GenericQuery,
    PersistedEventRepository,
    PersistedEventStore,
    QueryReplay,
    Retry,
    SemanticVersionEventUpcaster,
    SerializedEvent,
    SerializedSnapshot,
    UserError,
    ViewContext,
    default_codec,
    event_type_of,
    event_version_of,
)
from cqrs.codec import schema_fingerprint
from cqrs_conformance.bank_account import (
    AccountOpened,
    BankAccount,
    BankAccountServices,
    BankAccountView,
    CustomerDepositedMoney,
    DepositMoney,
    OpenAccount,
    WithdrawMoney,
    WriteCheck,
)
from cqrs_conformance.support import collect, event

D = Decimal


def bank_app(
    repository: PersistedEventRepository, *, snapshot_every: int | None = None, queries=()
) -> CqrsFramework[Any, Any, BankAccountServices]:
    store = PersistedEventStore(repository, BankAccount, snapshot_every=snapshot_every)
    return CqrsFramework(store, queries, BankAccountServices())


async def open_with(cqrs: CqrsFramework[Any, Any, Any], account: str, *deposits: str) -> None:
    await cqrs.execute(account, OpenAccount(account))
    for amount in deposits:
        await cqrs.execute(account, DepositMoney(D(amount)))


async def test_execute_commits_and_load_rebuilds_state(repository):
    cqrs = bank_app(repository)
    opened = await cqrs.execute("acc", OpenAccount("acc"))
    assert [(e.sequence, e.aggregate_id) for e in opened] == [(1, "acc")]
    await cqrs.execute("acc", DepositMoney(D("100.10")))
    await cqrs.execute("acc", WithdrawMoney(D("0.10"), "ATM-1"))
    context = await cqrs.store.load_aggregate("acc")
    assert context.version == 3
    assert context.aggregate == BankAccount(opened=True, balance=D("100.00"))
    events = await cqrs.store.load_events("acc")
    assert [type(e.payload).__name__ for e in events] == [
        "AccountOpened",
        "CustomerDepositedMoney",
        "CustomerWithdrewCash",
    ]
    assert events[1].payload == CustomerDepositedMoney(D("100.10"), D("100.10"))


async def test_committed_envelopes_match_what_is_loaded(repository):
    cqrs = bank_app(repository)
    committed = await cqrs.execute_with_metadata("acc", OpenAccount("acc"), {"user": "ann"})
    loaded = await cqrs.store.load_events("acc")
    assert [(e.event_id, e.position, e.sequence, e.payload, dict(e.metadata)) for e in loaded] == [
        (e.event_id, e.position, e.sequence, e.payload, {"user": "ann"}) for e in committed
    ]


async def test_user_error_commits_nothing(repository):
    cqrs = bank_app(repository)
    await open_with(cqrs, "acc", "10")
    with pytest.raises(UserError, match="funds not available"):
        await cqrs.execute("acc", WriteCheck("1170", D("10.01")))
    assert len(await cqrs.store.load_events("acc")) == 2


async def test_expected_version_guards_the_command(repository):
    cqrs = bank_app(repository)
    await open_with(cqrs, "acc", "10")  # at version 2
    before = [(e.sequence, e.event_id) for e in await cqrs.store.load_events("acc")]
    # Below and above the stored version alike: a conflict, and nothing is stored. Retry
    # changes nothing: a version mismatch is the caller's to resolve.
    for retry in (None, Retry(attempts=3, base_delay=0)):
        cqrs.retry = retry
        for expected in (1, 3, 4):
            with pytest.raises(AggregateConflict, match=f"at version 2, expected {expected}"):
                await cqrs.execute("acc", DepositMoney(D(1)), expected_version=expected)
        with pytest.raises(AggregateConflict, match="at version 0, expected 1"):
            await cqrs.execute("new", OpenAccount("new"), expected_version=1)
    assert [(e.sequence, e.event_id) for e in await cqrs.store.load_events("acc")] == before
    assert await cqrs.store.load_events("new") == []
    assert (await cqrs.store.load_aggregate("acc")).aggregate == BankAccount(True, D(10))
    await cqrs.execute("acc", DepositMoney(D(1)), expected_version=2)
    context = await cqrs.store.load_aggregate("acc")
    assert (context.version, context.aggregate) == (3, BankAccount(True, D(11)))


async def test_expected_version_0_on_an_existing_aggregate_is_always_a_conflict(repository):
    # expected_version=0 skips the load; a command refused (or yielding nothing) on the empty
    # state must still be reported as the version mismatch it is, not as the empty state's
    # user error or a success.
    cqrs = bank_app(repository)
    await open_with(cqrs, "acc", "10")
    with pytest.raises(AggregateConflict, match="expected 0"):
        await cqrs.execute("acc", DepositMoney(D(1)), expected_version=0)  # "not open" on empty
    with pytest.raises(AggregateConflict):
        await cqrs.execute("acc", OpenAccount("acc"), expected_version=0)
    with pytest.raises(UserError, match="account not open"):
        await cqrs.execute("new", DepositMoney(D(1)), expected_version=0)  # truly new
    assert len(await cqrs.store.load_events("acc")) == 2


async def test_stale_context_commit_conflicts_and_stores_nothing(repository):
    store = PersistedEventStore(repository, BankAccount)
    cqrs = CqrsFramework(store, (), BankAccountServices())
    await open_with(cqrs, "acc")
    stale = await store.load_aggregate("acc")
    await cqrs.execute("acc", DepositMoney(D(5)))
    with pytest.raises(AggregateConflict):
        await store.commit([CustomerDepositedMoney(D(1), D(1))], stale, {})
    assert (await store.load_aggregate("acc")).aggregate.balance == D(5)


async def test_a_context_stays_current_across_commits_and_snapshots_stay_exact(repository):
    # commit() advances the context's version; its aggregate must advance with it, whether
    # or not a snapshot was due. Otherwise a second command decided on the same context sees
    # stale state under an up-to-date token, and the next snapshot misses events.
    store = PersistedEventStore(repository, BankAccount, snapshot_every=2)
    context = await store.load_aggregate("acc")
    opened = await context.aggregate.handle(OpenAccount("acc"), BankAccountServices())
    await store.commit(opened, context, {})
    assert context.aggregate == (await store.load_aggregate("acc")).aggregate
    deposit = await context.aggregate.handle(DepositMoney(D(5)), BankAccountServices())
    await store.commit(deposit, context, {})  # crosses 2: a snapshot
    loaded = await store.load_aggregate("acc")
    assert (loaded.aggregate.opened, loaded.aggregate.balance) == (True, D(5))
    assert context.aggregate == loaded.aggregate
    assert context.version == loaded.version == 2


async def test_concurrent_commands_with_retry_lose_nothing(repository):
    cqrs = bank_app(repository)
    cqrs.retry = Retry(attempts=200, base_delay=0.001, max_delay=0.02)
    await open_with(cqrs, "acc")
    await asyncio.gather(*(cqrs.execute("acc", DepositMoney(D("1.01"))) for _ in range(32)))
    context = await cqrs.store.load_aggregate("acc")
    assert context.aggregate == BankAccount(opened=True, balance=D("32.32"))
    events = await cqrs.store.load_events("acc")
    assert [e.sequence for e in events] == list(range(1, 34))


@pytest.mark.parametrize("snapshot_every", [1, 2, 3, 5])
async def test_snapshots_at_and_across_boundaries_lose_nothing(repository, snapshot_every):
    # Commits of 1, 4, 2 and 3 events: some end on a boundary, some cross one and go on.
    store = PersistedEventStore(repository, BankAccount, snapshot_every=snapshot_every)
    context = await store.load_aggregate("acc")
    await store.commit([AccountOpened("acc")], context, {})
    balance = D(0)
    for size in (4, 2, 3):
        context = await store.load_aggregate("acc")
        events = []
        for _ in range(size):
            balance += 1
            events.append(CustomerDepositedMoney(D(1), balance))
        await store.commit(events, context, {})
    context = await store.load_aggregate("acc")
    assert context.version == 10
    assert context.aggregate.balance == D(9)
    snapshot = await repository.get_snapshot(BankAccount.aggregate_type, "acc")
    assert snapshot is not None
    assert snapshot.last_sequence % snapshot_every == 0 or snapshot.last_sequence in (5, 7, 10)
    stored = default_codec.decode_untyped(snapshot.payload)
    assert isinstance(stored, dict)
    assert sorted(stored) == ["schema", "state"]
    assert stored["schema"] == schema_fingerprint(BankAccount)
    from_snapshot = default_codec.convert(stored["state"], BankAccount)
    assert from_snapshot == BankAccount(opened=True, balance=D(snapshot.last_sequence - 1))


async def test_snapshot_plus_tail_is_used_and_matches_full_replay(repository):
    cqrs = bank_app(repository, snapshot_every=3)
    await open_with(cqrs, "acc", "1", "2", "3", "4")  # 5 events: snapshot at 3
    snapshot = await repository.get_snapshot(BankAccount.aggregate_type, "acc")
    assert snapshot is not None
    assert snapshot.last_sequence == 3
    full_reads: list[str] = []
    real_get_events = repository.get_events

    async def get_events(aggregate_type, aggregate_id):
        full_reads.append(aggregate_id)
        return await real_get_events(aggregate_type, aggregate_id)

    repository.get_events = get_events
    with_snapshot = await cqrs.store.load_aggregate("acc")
    assert full_reads == []  # the snapshot was used, not a full replay
    replayed = await PersistedEventStore(repository, BankAccount).load_aggregate("acc")
    assert with_snapshot.aggregate == replayed.aggregate
    assert with_snapshot.version == replayed.version == 5


UNUSABLE_SNAPSHOTS = {
    "bare-undecodable": b'{"balance": "x"}',
    "bare-empty": b"{}",  # decodes into the empty aggregate: a fallback to that must show
    "fingerprint-undecodable": b'{"schema": "%s", "state": {"balance": "x"}}',
    "fingerprint-not-an-object": b'{"schema": "%s", "state": [1]}',
    "fingerprint-wrong-field-type": b'{"schema": "%s", "state": {"opened": "yes"}}',
    "other-fingerprint": b'{"schema": "0ld", "state": {"opened": true, "balance": "5"}}',
    "unknown-envelope-key": b'{"schema": "%s", "state": {"opened": true}, "extra": 1}',
    "not-an-object": b"[]",
}


@pytest.mark.parametrize("payload", list(UNUSABLE_SNAPSHOTS.values()), ids=list(UNUSABLE_SNAPSHOTS))
async def test_undecodable_snapshot_falls_back_to_events(repository, payload, caplog):
    cqrs = bank_app(repository, snapshot_every=100)
    await open_with(cqrs, "acc", "7")
    if b"%s" in payload:
        payload %= schema_fingerprint(BankAccount).encode()
    garbage = SerializedSnapshot(BankAccount.aggregate_type, "acc", payload, 2, 1)
    # Plant the bad snapshot together with the next event, through the port.
    context = await cqrs.store.load_aggregate("acc")
    rows = [_serialized(context, CustomerDepositedMoney(D(1), D(8)))]
    await repository.persist(rows, garbage)
    with caplog.at_level(logging.WARNING, logger="cqrs.store"):
        reloaded = await cqrs.store.load_aggregate("acc")
    replayed = await PersistedEventStore(repository, BankAccount).load_aggregate("acc")
    assert reloaded.aggregate == replayed.aggregate == BankAccount(opened=True, balance=D(8))
    assert reloaded.version == replayed.version == 3
    assert reloaded.replace_snapshot
    warning = "snapshot of BankAccount 'acc' at sequence 2 is not used"
    assert any(r.name == "cqrs.store" and warning in r.getMessage() for r in caplog.records)
    # The next commit replaces it (sequence 4, far from a multiple of 100).
    await cqrs.execute("acc", DepositMoney(D(1)))
    snapshot = await repository.get_snapshot(BankAccount.aggregate_type, "acc")
    assert snapshot is not None
    assert (snapshot.last_sequence, snapshot.snapshot_version) == (4, 2)
    assert (await cqrs.store.load_aggregate("acc")).aggregate == BankAccount(True, D(9))


async def test_aggregate_store_mode_keeps_state_and_events(repository):
    store = PersistedEventStore.new_aggregate_store(repository, BankAccount)
    cqrs = CqrsFramework(store, (), BankAccountServices())
    await open_with(cqrs, "acc", "3", "4")
    snapshot = await repository.get_snapshot(BankAccount.aggregate_type, "acc")
    assert snapshot is not None
    assert (snapshot.last_sequence, snapshot.snapshot_version) == (3, 3)
    replayed = await PersistedEventStore(repository, BankAccount).load_aggregate("acc")
    assert (await store.load_aggregate("acc")).aggregate == replayed.aggregate
    assert replayed.aggregate == BankAccount(opened=True, balance=D(7))
    assert len(await store.load_events("acc")) == 3


async def test_undecodable_event_raises_deserialization_error_naming_it(repository):
    cqrs = bank_app(repository)
    await open_with(cqrs, "acc")
    context = await cqrs.store.load_aggregate("acc")
    bad = _serialized(context, CustomerDepositedMoney(D(1), D(1)), payload=b'{"amount": []}')
    await repository.persist([bad], None)
    with pytest.raises(DeserializationError) as caught:
        await cqrs.store.load_aggregate("acc")
    message = str(caught.value)
    for part in ("CustomerDepositedMoney", "'1.0'", "BankAccount", "'acc'", "sequence 2"):
        assert part in message
    # The good event is unharmed.
    assert len(await repository.get_events(BankAccount.aggregate_type, "acc")) == 2


async def test_unknown_event_type_raises_deserialization_error(repository):
    cqrs = bank_app(repository)
    await open_with(cqrs, "acc")
    context = await cqrs.store.load_aggregate("acc")
    odd = _serialized(context, CustomerDepositedMoney(D(1), D(1)), event_type="AccountFrozen")
    await repository.persist([odd], None)
    with pytest.raises(DeserializationError, match="unknown event type 'AccountFrozen'"):
        await cqrs.store.load_events("acc")


# -- upcasters ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Renamed(DomainEvent):
    event_type: ClassVar[str] = "Renamed"
    event_version: ClassVar[str] = "2.0"
    full_name: str
    source: str


@dataclass
class Person(Aggregate[str, Renamed, None]):
    aggregate_type: ClassVar[str] = "Person"
    event_classes: ClassVar[tuple[type[object], ...]] = (Renamed,)
    name: str = ""

    async def handle(self, command: str, services: None) -> list[Renamed]:
        return [Renamed(command, "v2")]

    def apply(self, event: Renamed) -> None:
        self.name = event.full_name


UPCASTERS = [
    SemanticVersionEventUpcaster("Renamed", "1.1", lambda p: {**p, "full_name": p.pop("name")}),
    SemanticVersionEventUpcaster("Renamed", "2.0", lambda p: {**p, "source": "upcast"}),
]


async def _plant_old_events(repository) -> None:
    await repository.persist(
        [
            event("p", 1, aggregate_type="Person", event_type="Renamed", payload={"name": "ann"}),
            event(
                "p",
                2,
                aggregate_type="Person",
                event_type="Renamed",
                event_version="1.1",
                payload={"full_name": "bob"},
            ),
        ],
        None,
    )


async def test_upcaster_chain_applies_on_load_stream_and_replay(repository):
    await _plant_old_events(repository)
    store = PersistedEventStore(repository, Person).with_upcasters(UPCASTERS)
    context = await store.load_aggregate("p")
    assert context.aggregate.name == "bob"
    expected = [Renamed("ann", "upcast"), Renamed("bob", "upcast")]
    assert [e.payload for e in await store.load_events("p")] == expected
    assert [e.payload for e in await collect(store.stream_events("p"))] == expected
    assert [e.payload for e in await collect(store.stream_all_events())] == expected
    replayed: list[object] = []

    class Collect:
        async def dispatch(self, aggregate_id, events):
            replayed.extend(e.payload for e in events)

    assert await QueryReplay(store, Collect()).replay_all() == 2
    assert replayed == expected


async def test_current_events_pass_upcasters_unchanged(repository):
    store = PersistedEventStore(repository, Person).with_upcasters(UPCASTERS)
    cqrs = CqrsFramework(store)
    await cqrs.execute("p", "carol")
    assert [e.payload for e in await store.load_events("p")] == [Renamed("carol", "v2")]


# -- views -------------------------------------------------------------------------------------


async def test_view_repository_optimistic_locking(backend):
    repository = await backend.open_repository()
    views = repository.view_repository(BankAccountView, backend.name("views"))
    await views.create_schema()
    await views.create_schema()
    assert await views.load("acc") is None
    assert await views.load_with_context("acc") is None
    await views.update_view(BankAccountView("acc", D("1.50")), ViewContext("acc", 0))
    view, context = await views.load_with_context("acc")
    assert (view.account_id, view.balance, context.version) == ("acc", D("1.50"), 1)
    with pytest.raises(AggregateConflict):
        await views.update_view(BankAccountView("acc", D(9)), ViewContext("acc", 0))
    await views.update_view(BankAccountView("acc", D(2)), context)
    with pytest.raises(AggregateConflict):
        await views.update_view(BankAccountView("acc", D(3)), context)  # stale version
    assert (await views.load("acc")).balance == D(2)


async def test_a_view_that_does_not_decode_names_itself_and_its_table(backend):
    repository = await backend.open_repository()
    table = backend.name("views")
    views = repository.view_repository(dict[str, int], table)
    await views.create_schema()
    await views.update_view({"n": 1}, ViewContext("v1", 0))
    other_type = repository.view_repository(list[int], table)  # the same table, another type
    with pytest.raises(DeserializationError, match=rf"view 'v1' in {table} \(version 1\)"):
        await other_type.load("v1")
    assert await views.load("v1") == {"n": 1}  # nothing else is lost


async def test_a_view_conflict_names_the_view_and_its_table(backend):
    repository = await backend.open_repository()
    table = backend.name("views")
    views = repository.view_repository(dict[str, int], table)
    await views.create_schema()
    await views.update_view({"n": 1}, ViewContext("v1", 0))
    with pytest.raises(AggregateConflict, match=rf"view 'v1' in {table} was stored by another"):
        await views.update_view({"n": 2}, ViewContext("v1", 0))
    await views.update_view({"n": 2}, ViewContext("v1", 1), 5)  # any greater version
    with pytest.raises(AggregateConflict, match=rf"view 'v1' in {table} is no longer at version 1"):
        await views.update_view({"n": 3}, ViewContext("v1", 1))
    assert await views.load_with_context("v1") == ({"n": 2}, ViewContext("v1", 5))
    with pytest.raises(ValueError, match="greater than 5"):
        await views.update_view({"n": 3}, ViewContext("v1", 5), 5)


@pytest.mark.parametrize("view_id", ["", "x\x00", "€" * 400, 7])
async def test_bad_view_ids_are_refused_on_every_backend(backend, view_id):
    repository = await backend.open_repository()
    views = repository.view_repository(dict[str, int], backend.name("views"))
    await views.create_schema()
    with pytest.raises(ValueError, match="view_id"):
        await views.load(view_id)
    with pytest.raises(ValueError, match="view_id"):
        await views.update_view({"n": 1}, ViewContext(view_id, 0))


async def test_generic_query_maintains_the_view_after_each_commit(backend):
    repository = await backend.open_repository()
    views = repository.view_repository(BankAccountView, backend.name("views"))
    await views.create_schema()
    cqrs = bank_app(repository, queries=[GenericQuery(views, BankAccountView)])
    await open_with(cqrs, "acc", "1000")
    await cqrs.execute("acc", WithdrawMoney(D(400), "ATM-N"))
    await cqrs.execute("acc", WriteCheck("1170", D("256.28")))
    view = await views.load("acc")
    assert view is not None
    assert view.balance == D("343.72")
    assert view.written_checks == ["1170"]
    assert [entry.amount for entry in view.ledger] == [D(1000), D(-400), D("-256.28")]


async def test_query_replay_rebuilds_a_view_from_stored_events(backend):
    repository = await backend.open_repository()
    live = repository.view_repository(BankAccountView, backend.name("live"))
    await live.create_schema()
    cqrs = bank_app(repository, queries=[GenericQuery(live, BankAccountView)])
    for account in ("a", "b", "c"):
        await open_with(cqrs, account, "5", "6")
    await cqrs.execute("b", WithdrawMoney(D(1), "ATM-2"))
    rebuilt = repository.view_repository(BankAccountView, backend.name("rebuilt"))
    await rebuilt.create_schema()
    store = PersistedEventStore(repository, BankAccount)
    assert await QueryReplay(store, GenericQuery(rebuilt, BankAccountView)).replay_all() == 10
    for account in ("a", "b", "c"):
        assert await rebuilt.load(account) == await live.load(account)
    single = repository.view_repository(BankAccountView, backend.name("single"))
    await single.create_schema()
    assert await QueryReplay(store, GenericQuery(single, BankAccountView)).replay("b") == 4
    assert await single.load("b") == await live.load("b")


class BatchRecorder:
    """A query that records each dispatch as (aggregate id, sequences)."""

    def __init__(self) -> None:
        self.batches: list[tuple[str, list[int]]] = []

    async def dispatch(self, aggregate_id, events):
        assert {e.aggregate_id for e in events} == {aggregate_id}
        self.batches.append((aggregate_id, [e.sequence for e in events]))


async def test_query_replay_dispatches_each_event_once_in_order_in_full_batches(repository):
    cqrs = bank_app(repository)
    await open_with(cqrs, "a", "1", "2", "3", "4", "5")  # a: 1-6
    await open_with(cqrs, "b", "1")  # b: 1-2
    await cqrs.execute("a", DepositMoney(D(6)))  # a: 7, after b's events in global order
    store = PersistedEventStore(repository, BankAccount)

    async def replay(batch_size: int, aggregate_id: str | None = None, after: int | None = None):
        recorder = BatchRecorder()
        replay = QueryReplay(store, recorder, batch_size=batch_size)
        if aggregate_id is None:
            count = await replay.replay_all(after)
        else:
            count = await replay.replay(aggregate_id)
        assert count == sum(len(sequences) for _, sequences in recorder.batches)
        return recorder.batches

    assert await replay(3, "a") == [("a", [1, 2, 3]), ("a", [4, 5, 6]), ("a", [7])]
    assert await replay(7, "a") == [("a", [1, 2, 3, 4, 5, 6, 7])]
    assert await replay(8, "a") == [("a", [1, 2, 3, 4, 5, 6, 7])]
    assert await replay(1, "b") == [("b", [1]), ("b", [2])]
    assert await replay(3) == [
        ("a", [1, 2, 3]),
        ("a", [4, 5, 6]),
        ("b", [1, 2]),
        ("a", [7]),
    ]
    assert await replay(2) == [
        ("a", [1, 2]),
        ("a", [3, 4]),
        ("a", [5, 6]),
        ("b", [1, 2]),
        ("a", [7]),
    ]
    assert await replay(500) == [("a", [1, 2, 3, 4, 5, 6]), ("b", [1, 2]), ("a", [7])]
    assert await replay(1) == [
        (e.aggregate_id, [e.sequence]) for e in await collect(store.stream_all_events())
    ]
    third = (await store.load_events("a"))[2].position
    assert await replay(3, after=third) == [("a", [4, 5, 6]), ("b", [1, 2]), ("a", [7])]
    for nonsense in (0, -1):
        with pytest.raises(ConfigurationError, match="batch_size"):
            QueryReplay(store, BatchRecorder(), batch_size=nonsense)


def _serialized(context, event, *, payload=None, event_type=None):
    return SerializedEvent(
        BankAccount.aggregate_type,
        context.aggregate_id,
        context.version + 1,
        event_type or event_type_of(type(event)),
        event_version_of(type(event)),
        payload if payload is not None else default_codec.encode(event),
        b"{}",
        datetime.now(UTC),
        uuid4(),
    )


async def test_view_version_can_jump_but_only_forward(backend):
    repository = await backend.open_repository()
    views = repository.view_repository(BankAccountView, backend.name("views"))
    await views.create_schema()
    await views.update_view(BankAccountView("acc"), ViewContext("acc", 0), 7)
    _, context = await views.load_with_context("acc")
    assert context.version == 7
    with pytest.raises(ValueError, match="greater than 7"):
        await views.update_view(BankAccountView("acc"), context, 7)
    await views.update_view(BankAccountView("acc"), context, 9)
    assert (await views.load_with_context("acc"))[1].version == 9


async def test_generic_query_applies_each_event_once_in_sequence_order(backend):
    repository = await backend.open_repository()
    views = repository.view_repository(BankAccountView, backend.name("views"))
    await views.create_schema()
    cqrs = bank_app(repository)
    await open_with(cqrs, "acc", "1", "2", "3", "4")
    envelopes = await cqrs.store.load_events("acc")
    query = GenericQuery(views, BankAccountView, attempts=2, max_delay=0)
    with pytest.raises(AggregateConflict, match="next events start at 3"):
        await query.dispatch("acc", envelopes[2:3])  # the first two have not landed
    assert await views.load("acc") is None
    # Dispatches arriving out of order still apply in sequence order, each once.
    patient = GenericQuery(views, BankAccountView, attempts=200, max_delay=0.01)
    await asyncio.gather(
        *(patient.dispatch("acc", envelopes[i : i + 1]) for i in reversed(range(5)))
    )
    await patient.dispatch("acc", envelopes)  # a repeated dispatch changes nothing
    view, context = await views.load_with_context("acc")
    assert context.version == 5
    assert view.balance == D(10)
    assert [entry.amount for entry in view.ledger] == [D(1), D(2), D(3), D(4)]


async def test_expected_version_zero_creates_without_reading_and_conflicts_if_it_exists(
    repository,
):
    cqrs = bank_app(repository)
    reads: list[str] = []
    real_get_events = repository.get_events

    async def counting_get_events(aggregate_type, aggregate_id):
        reads.append(aggregate_id)
        return await real_get_events(aggregate_type, aggregate_id)

    repository.get_events = counting_get_events
    await cqrs.execute("new", OpenAccount("new"), expected_version=0)
    assert reads == []
    assert (await cqrs.store.load_aggregate("new")).version == 1
    assert reads == ["new"]
    with pytest.raises(AggregateConflict):
        await cqrs.execute("new", OpenAccount("new"), expected_version=0)
    assert len(await cqrs.store.load_events("new")) == 1


async def test_generic_query_with_a_store_heals_a_view_that_missed_an_update(backend):
    repository = await backend.open_repository()
    views = repository.view_repository(BankAccountView, backend.name("views"))
    await views.create_schema()
    store = PersistedEventStore(repository, BankAccount)
    healing = GenericQuery(views, BankAccountView, store=store, attempts=1)
    cqrs = CqrsFramework(store, [healing], BankAccountServices())
    await open_with(cqrs, "acc", "1")
    # A process died after these commits, before its view update: the view misses them.
    silent = CqrsFramework(store, (), BankAccountServices())
    await silent.execute("acc", DepositMoney(D(2)))
    await silent.execute("acc", DepositMoney(D(3)))
    await cqrs.execute("acc", DepositMoney(D(4)))  # the next command's dispatch fills the gap
    view, context = await views.load_with_context("acc")
    assert context.version == 5
    assert view.balance == D(10)
    assert [entry.amount for entry in view.ledger] == [D(1), D(2), D(3), D(4)]
