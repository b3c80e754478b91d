"""Projections and their runner on the in-memory backend: checkpoints, leases, fencing,
failure policies, exactly-once views and read-your-writes."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, ClassVar

import msgspec
import pytest

from cqrs import (
    ConfigurationError,
    CqrsFramework,
    DatabaseConnectionError,
    DeserializationError,
    EventDecoder,
    EventEnvelope,
    LeaseLost,
    PersistedEventStore,
    SerializedEvent,
)
from cqrs.checkpoints import MemoryCheckpoints
from cqrs.projection import (
    AggregatePartition,
    ProjectionFailedError,
    ProjectionRunner,
    ViewProjection,
    partition_of,
    partitions,
)
from cqrs.rebuild import SwitchableViews, rebuild, reset_views
from cqrs.repository import ViewContext
from cqrs.upcasting import SemanticVersionEventUpcaster
from cqrs_memory import MemoryEventRepository
from examples.bank_account.domain import (
    AccountOpened,
    BankAccount,
    BankAccountServices,
    CustomerDepositedMoney,
    CustomerWithdrewCash,
    DepositMoney,
    OpenAccount,
    WithdrawMoney,
)

FAST = {"poll_interval": 0.02, "retry_delay": 0.001}


@dataclass
class Totals:
    deposits: Decimal = Decimal(0)
    withdrawals: Decimal = Decimal(0)
    accounts: int = 0
    positions: list[int] | None = None


def update_totals(view: Totals, envelope) -> None:
    event = envelope.payload
    if isinstance(event, AccountOpened):
        view.accounts += 1
    elif isinstance(event, CustomerDepositedMoney):
        view.deposits += event.amount
    elif isinstance(event, CustomerWithdrewCash):
        view.withdrawals += event.amount
    view.positions = [*(view.positions or []), envelope.position]


@dataclass
class Balance:
    balance: Decimal = Decimal(0)


def update_balance(view: Balance, envelope) -> None:
    balance = getattr(envelope.payload, "balance", None)
    if balance is not None:
        view.balance = balance


class Setup:
    def __init__(self) -> None:
        self.repository = MemoryEventRepository()
        self.store = PersistedEventStore(self.repository, BankAccount)
        self.bank = CqrsFramework(self.store, (), BankAccountServices())
        self.checkpoints = MemoryCheckpoints()
        self.totals = self.repository.view_repository(Totals, "totals")
        self.balances = self.repository.view_repository(Balance, "balances")

    def projections(self, **kwargs):
        return [
            ViewProjection(
                "totals",
                [self.store],
                self.totals,
                Totals,
                key=lambda envelope: "all",
                update=update_totals,
                **kwargs,
            ),
            ViewProjection(
                "balances",
                [self.store],
                self.balances,
                Balance,
                key=lambda envelope: envelope.aggregate_id,
                update=update_balance,
            ),
        ]

    def runner(self, projections=None, **options):
        merged = {**FAST, **options}
        return ProjectionRunner(
            self.repository,
            self.checkpoints,
            self.projections() if projections is None else projections,
            **merged,
        )

    async def activity(self, accounts: int = 3, deposits: int = 4) -> int:
        last = 0
        for number in range(accounts):
            name = f"acc-{number}"
            await self.bank.execute(name, OpenAccount(name))
            for amount in range(1, deposits + 1):
                envelopes = await self.bank.execute(name, DepositMoney(Decimal(amount)))
                last = envelopes[-1].position
            envelopes = await self.bank.execute(name, WithdrawMoney(Decimal(1), "ATM-1"))
            last = envelopes[-1].position
        return last


@pytest.fixture
async def setup() -> Setup:
    state = Setup()
    await state.repository.open()
    return state


@contextlib.asynccontextmanager
async def running(runner: ProjectionRunner):
    task = asyncio.create_task(runner.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def expected_totals(setup: Setup) -> Totals:
    view = Totals()
    async for envelope in setup.store.stream_all_events():
        update_totals(view, envelope)
    return view


async def test_views_follow_commits_and_wait_for_gives_read_your_writes(setup):
    last = await setup.activity()
    runner = setup.runner()
    async with running(runner):
        await runner.wait_for(last, timeout=5)
        assert await setup.totals.load("all") == await expected_totals(setup)
        more = await setup.bank.execute("acc-0", DepositMoney(Decimal(100)))
        await runner.wait_for(more[-1].position, timeout=5)
        totals = await setup.totals.load("all")
        assert totals is not None
        assert totals.deposits == Decimal(3 * (1 + 2 + 3 + 4) + 100)
        balance = await setup.balances.load("acc-0")
        assert balance == Balance(Decimal(1 + 2 + 3 + 4 - 1 + 100))
        status = runner.status()["totals"]
        assert status.state == "running"
        assert status.checkpoint == more[-1].position
        assert status.lag_events == 0
        assert status.lag_seconds == 0.0
    assert await setup.checkpoints.position("totals") == more[-1].position


async def test_a_restarted_runner_resumes_from_its_checkpoint(setup):
    first_last = await setup.activity(accounts=2)
    runner = setup.runner()
    async with running(runner):
        await runner.wait_for(first_last, timeout=5)
    assert await setup.checkpoints.position("totals") == first_last
    seen: list[int] = []

    class Spy:
        name = "totals"
        sources = (setup.store,)
        event_types = None

        async def handle(self, events):
            seen.extend(e.position for e in events)

    more = await setup.bank.execute("acc-0", DepositMoney(Decimal(5)))
    runner = setup.runner([Spy()])
    async with running(runner):
        await runner.wait_for(more[-1].position, timeout=5)
    assert seen == [more[-1].position]  # nothing before the checkpoint came again


async def test_one_runner_at_a_time_and_a_takeover_when_it_dies(setup):
    last = await setup.activity(accounts=1)
    first = setup.runner(owner="first", lease_ttl=0.3)
    second = setup.runner(owner="second", lease_ttl=0.3)
    async with running(first):
        await first.wait_for(last, timeout=5)
        async with running(second):
            await asyncio.sleep(0.2)
            states = {first.status()["totals"].state, second.status()["totals"].state}
            assert states == {"running", "standby"}
    # the first runner is gone (cancelled: its lease was released); start the second again
    async with running(second):
        more = await setup.bank.execute("acc-0", DepositMoney(Decimal(7)))
        await second.wait_for(more[-1].position, timeout=5)
        assert second.status()["totals"].state == "running"
    assert (await setup.totals.load("all")) == await expected_totals(setup)


async def test_a_stale_runner_is_fenced_off(setup):
    lease = await setup.checkpoints.acquire("totals", "stale", ttl=0.05)
    assert lease is not None
    await asyncio.sleep(0.06)  # the stale runner pauses past its lease
    newer = await setup.checkpoints.acquire("totals", "fresh", ttl=10)
    assert newer is not None
    assert newer.token > lease.token
    await setup.checkpoints.save(newer, 10)
    with pytest.raises(LeaseLost, match="taken over"):
        await setup.checkpoints.save(lease, 99)
    assert not await setup.checkpoints.renew(lease, 10)
    assert await setup.checkpoints.position("totals") == 10
    assert await setup.checkpoints.acquire("totals", "stale", ttl=10) is None


async def test_a_runner_whose_lease_was_taken_stops_writing(setup):
    last = await setup.activity(accounts=1)
    runner = setup.runner(owner="old", lease_ttl=0.2)
    async with running(runner):
        await runner.wait_for(last, timeout=5)
        await setup.checkpoints.reset("totals", 0)  # like a takeover: the token moves on
        lease = await setup.checkpoints.acquire("totals", "new", ttl=30)
        assert lease is not None
        await setup.checkpoints.save(lease, 1)
        await setup.bank.execute("acc-0", DepositMoney(Decimal(1)))
        await asyncio.sleep(0.3)
        assert runner.status()["totals"].state == "standby"
    assert await setup.checkpoints.position("totals") == 1


async def test_an_event_that_keeps_failing_stops_its_projection_only(setup):
    await setup.activity(accounts=1, deposits=3)

    def fragile(view: Totals, envelope) -> None:
        if isinstance(envelope.payload, CustomerDepositedMoney) and envelope.payload.amount == 2:
            raise ValueError("cannot count a 2")
        update_totals(view, envelope)

    totals = ViewProjection(
        "totals", [setup.store], setup.totals, Totals, key=lambda e: "all", update=fragile
    )
    balances = setup.projections()[1]
    runner = setup.runner([totals, balances], attempts=2)
    events = await setup.store.load_events("acc-0")
    async with running(runner):
        for _ in range(200):
            if runner.status()["totals"].state == "failed":
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)
        status = runner.status()
        assert status["totals"].state == "failed"
        bad = events[2]  # open, deposit 1, deposit 2
        assert f"position {bad.position}" in (status["totals"].error or "")
        assert status["totals"].checkpoint == events[1].position
        assert status["balances"].state == "running"
    assert await setup.checkpoints.position("totals") == events[1].position
    totals_view = await setup.totals.load("all")
    assert totals_view is not None
    assert totals_view.deposits == Decimal(1)


async def test_park_sets_failing_events_aside_and_goes_on(setup):
    await setup.activity(accounts=1, deposits=3)
    events = await setup.store.load_events("acc-0")

    def fragile(view: Totals, envelope) -> None:
        if envelope.position == events[2].position:
            raise ValueError("poison")
        update_totals(view, envelope)

    totals = ViewProjection(
        "totals", [setup.store], setup.totals, Totals, key=lambda e: "all", update=fragile
    )
    runner = setup.runner([totals], attempts=2, on_failure="park")
    async with running(runner):
        await runner.wait_for(events[-1].position, timeout=5)
    parked = await setup.checkpoints.parked("totals")
    assert [(p.position, p.event_id) for p in parked] == [
        (events[2].position, str(events[2].event_id))
    ]
    assert "poison" in parked[0].error
    view = await setup.totals.load("all")
    assert view is not None
    assert view.deposits == Decimal(1 + 3)
    assert runner.status()["totals"].parked == 1


async def test_transient_database_errors_are_retried_until_they_pass(setup):
    last = await setup.activity(accounts=1)
    failures = {"left": 3}
    applied: list[int] = []

    class Flaky:
        name = "flaky"
        sources = (setup.store,)
        event_types = None

        async def handle(self, events):
            if failures["left"]:
                failures["left"] -= 1
                raise DatabaseConnectionError("the view database restarts")
            applied.extend(e.position for e in events)

    runner = setup.runner([Flaky()], attempts=1)
    async with running(runner):
        await runner.wait_for(last, timeout=5)
    assert applied == [e.position for e in await setup.store.load_events("acc-0")]


async def test_event_types_select_what_is_handled_and_the_checkpoint_moves_past_the_rest(setup):
    last = await setup.activity(accounts=2, deposits=2)
    projection = setup.projections(event_types={"AccountOpened"})[0]
    runner = setup.runner([projection])
    async with running(runner):
        await runner.wait_for(last, timeout=5)
    view = await setup.totals.load("all")
    assert view is not None
    assert (view.accounts, view.deposits) == (2, Decimal(0))
    assert await setup.checkpoints.position("totals") == last


async def test_a_batch_handed_over_again_takes_effect_once(setup):
    await setup.activity(accounts=2)
    runner = setup.runner(batch_size=4)
    async with running(runner):
        await runner.wait_for((await setup.store.load_events("acc-1"))[-1].position, timeout=5)
    # a crash after the views were written and before the checkpoint: the batch comes again
    await setup.checkpoints.reset("totals", 0)
    await setup.checkpoints.reset("balances", 0)
    runner = setup.runner(batch_size=3)
    last = (await setup.store.load_events("acc-1"))[-1].position
    async with running(runner):
        await runner.wait_for(last, timeout=5)
    assert await setup.totals.load("all") == await expected_totals(setup)


async def test_stop_returns_after_the_current_batches(setup):
    await setup.activity(accounts=1)
    runner = setup.runner()
    task = asyncio.create_task(runner.run())
    await asyncio.sleep(0.1)
    runner.stop()
    await asyncio.wait_for(task, 5)
    assert {s.state for s in runner.status().values()} == {"stopped"}
    # the lease was released: another runner takes it at once
    assert await setup.checkpoints.acquire("totals", "other", ttl=5) is not None


async def test_wait_for_times_out_when_nothing_runs(setup):
    runner = setup.runner()
    with pytest.raises(TimeoutError):
        await runner.wait_for(5, timeout=0.1)


def test_bad_settings_are_configuration_errors():
    setup = Setup()
    projections = setup.projections()
    with pytest.raises(ValueError, match="unique"):
        ProjectionRunner(setup.repository, setup.checkpoints, [projections[0], projections[0]])
    with pytest.raises(ValueError, match="batch_size"):
        ProjectionRunner(setup.repository, setup.checkpoints, projections, batch_size=0)
    with pytest.raises(ValueError, match="on_failure"):
        ProjectionRunner(setup.repository, setup.checkpoints, projections, on_failure="skip")  # type: ignore[arg-type]


def test_failed_error_names_the_event():
    row = SerializedEvent("T", "a", 3, "E", "1.0", b"{}", b"{}", datetime.now(UTC), "x", 42)
    error = ProjectionFailedError("p", row, ValueError("boom"))
    assert "position 42" in str(error)
    assert "'a' sequence 3" in str(error)
    assert error.position == 42


@pytest.mark.parametrize("attempts", [0, -1])
def test_view_writers_need_at_least_one_attempt(attempts):
    from cqrs import ConfigurationError, GenericQuery  # noqa: PLC0415

    setup = Setup()
    with pytest.raises(ConfigurationError, match="at least 1"):
        ViewProjection(
            "t",
            [setup.store],
            setup.totals,
            Totals,
            key=str,
            update=update_totals,
            attempts=attempts,
        )
    with pytest.raises(ConfigurationError, match="at least 1"):
        GenericQuery(setup.totals, Totals, attempts=attempts)  # type: ignore[type-var]


class CountingCheckpoints(MemoryCheckpoints):
    """The reference checkpoint store, counting the checkpoint writes."""

    def __init__(self) -> None:
        super().__init__()
        self.saves: list[int] = []

    async def save(self, lease, position: int) -> None:
        self.saves.append(position)
        await super().save(lease, position)


class Positions:
    """A projection (not transactional) that records the positions it is handed."""

    def __init__(self, setup: Setup, name: str = "positions") -> None:
        self.name, self.sources, self.event_types = name, (setup.store,), None
        self.seen: list[int] = []

    async def handle(self, events) -> None:
        self.seen.extend(e.position for e in events)


async def saved(runner: ProjectionRunner, name: str, position: int) -> None:
    async with asyncio.timeout(5):
        while runner.status()[name].saved < position:  # noqa: ASYNC110 - polls a status
            await asyncio.sleep(0.005)


async def test_catching_up_saves_the_checkpoint_at_the_end_not_after_every_batch(setup):
    last = await setup.activity(accounts=4, deposits=5)  # 28 events: 7 batches of 4
    setup.checkpoints = CountingCheckpoints()
    projection = Positions(setup)
    runner = setup.runner([projection], batch_size=4, save_interval=60)
    async with running(runner):
        await runner.wait_for(last, timeout=5)
        await saved(runner, "positions", last)
        assert setup.checkpoints.saves == [last]  # when the read reached the end
        more = await setup.bank.execute("acc-0", DepositMoney(Decimal(1)))
        await runner.wait_for(more[-1].position, timeout=5)
        await saved(runner, "positions", more[-1].position)
        assert setup.checkpoints.saves == [last, more[-1].position]  # live: every batch
    assert len(projection.seen) == len(set(projection.seen)) == 29


async def test_with_save_interval_0_every_batch_is_saved(setup):
    last = await setup.activity(accounts=4, deposits=5)
    setup.checkpoints = CountingCheckpoints()
    runner = setup.runner([Positions(setup)], batch_size=4, save_interval=0)
    async with running(runner):
        await runner.wait_for(last, timeout=5)
        await saved(runner, "positions", last)
    assert len(setup.checkpoints.saves) == 7
    assert setup.checkpoints.saves[-1] == last


async def test_a_graceful_stop_in_the_middle_of_a_catch_up_saves_what_was_applied(setup):
    await setup.activity(accounts=4, deposits=5)
    setup.checkpoints = CountingCheckpoints()
    entered = asyncio.Event()
    runners: list[ProjectionRunner] = []

    class StopsAfterTwoBatches(Positions):
        async def handle(self, events) -> None:
            await super().handle(events)
            if len(self.seen) >= 8:
                runners[0].stop()
                entered.set()

    projection = StopsAfterTwoBatches(setup)
    runners.append(setup.runner([projection], batch_size=4, save_interval=60))
    await asyncio.wait_for(runners[0].run(), 5)
    assert entered.is_set()
    assert await setup.checkpoints.position("positions") == projection.seen[-1]
    assert setup.checkpoints.saves == [projection.seen[-1]]


async def test_a_failing_event_saves_the_checkpoint_right_before_it_even_when_deferred(setup):
    await setup.activity(accounts=3, deposits=5)
    setup.checkpoints = CountingCheckpoints()
    events = [e async for e in setup.store.stream_all_events()]
    poison = events[9].position  # in the third batch of 4

    class Fails(Positions):
        async def handle(self, batch) -> None:
            if any(e.position == poison for e in batch):
                raise ValueError("poison")
            await super().handle(batch)

    runner = setup.runner([Fails(setup)], batch_size=4, save_interval=60, attempts=1)
    async with running(runner):

        async def failed() -> bool:
            return bool(runner.status()["positions"].state == "failed")

        while not await failed():  # noqa: ASYNC110 - polls a status
            await asyncio.sleep(0.01)
    assert await setup.checkpoints.position("positions") == events[8].position


def test_save_interval_must_be_a_number_of_seconds():
    setup = Setup()
    with pytest.raises(ValueError, match="save_interval"):
        ProjectionRunner(setup.repository, setup.checkpoints, setup.projections(), save_interval=-1)


async def test_view_projections_commit_with_the_checkpoints_of_their_own_database(setup):
    totals = setup.projections()[0]
    assert not totals.commits_with(setup.checkpoints)  # a separate store: two writes
    assert totals.commits_with(setup.repository.checkpoint_store())
    other = MemoryEventRepository()
    await other.open()
    assert not totals.commits_with(other.checkpoint_store())  # another database
    with pytest.raises(ConfigurationError, match="cannot store its views"):
        await totals.handle_and_save([], setup.checkpoints, None, 1)


async def test_a_same_database_view_projection_is_one_commit_per_batch(setup):
    last = await setup.activity(accounts=2)
    checkpoints = setup.repository.checkpoint_store()
    saves: list[int] = []
    plain_save = checkpoints.save

    async def save(lease, position):  # a checkpoint written on its own, not with the views
        saves.append(position)
        await plain_save(lease, position)

    checkpoints.save = save
    runner = ProjectionRunner(
        setup.repository,
        checkpoints,
        setup.projections()[:1],
        batch_size=3,
        poll_interval=0.02,
        retry_delay=0.001,
    )
    async with running(runner):
        await runner.wait_for(last, timeout=5)
    assert saves == []
    assert await checkpoints.position("totals") == last
    assert await setup.totals.load("all") == await expected_totals(setup)


async def test_a_renamed_projection_writes_other_views_under_its_own_checkpoint(setup):
    last = await setup.activity(accounts=1)
    copy = setup.repository.view_repository(Totals, "totals_copy")
    renamed = setup.projections()[0].renamed("totals-copy", copy)
    assert renamed.name == "totals-copy"
    runner = setup.runner([renamed])
    async with running(runner):
        await runner.wait_for(last, timeout=5)
    assert await copy.load("all") == await expected_totals(setup)
    assert await setup.totals.load("all") is None
    assert await setup.checkpoints.position("totals") == 0


async def test_a_reset_needs_views_in_the_checkpoints_database(setup):
    with pytest.raises(ConfigurationError, match="delete them yourself"):
        await reset_views(setup.checkpoints, setup.projections()[0])


async def test_switchable_views_serve_the_current_views(setup):
    copy = setup.repository.view_repository(Totals, "totals_copy")
    await setup.totals.update_view(Totals(accounts=1), ViewContext("all", 0))
    await copy.update_view(Totals(accounts=2), ViewContext("all", 0))
    serving = SwitchableViews(setup.totals)
    assert await serving.load("all") == Totals(accounts=1)
    serving.switch(copy)
    assert await serving.load("all") == Totals(accounts=2)
    loaded = await serving.load_with_context("all")
    assert loaded is not None
    await serving.update_view(Totals(accounts=3), loaded[1])
    assert await copy.load("all") == Totals(accounts=3)
    with pytest.raises(ConfigurationError, match="itself"):
        serving.switch(serving)


async def test_a_rebuild_that_fails_raises_and_does_not_switch(setup):
    await setup.activity(accounts=1)

    class Broken(Positions):
        async def handle(self, events) -> None:
            raise ValueError("broken")

    switched: list[bool] = []
    with pytest.raises(RuntimeError, match="failed"):
        await rebuild(
            setup.repository,
            setup.checkpoints,
            Broken(setup, "broken"),
            lambda: switched.append(True),
            timeout=5,
            attempts=1,
            **FAST,
        )
    assert switched == []


async def test_a_rebuild_that_cannot_catch_up_in_time_raises_timeout(setup):
    await setup.activity(accounts=1)

    class Slow(Positions):
        async def handle(self, events) -> None:
            await asyncio.sleep(10)

    switched: list[bool] = []
    with pytest.raises(TimeoutError):
        await rebuild(
            setup.repository,
            setup.checkpoints,
            Slow(setup, "slow"),
            lambda: switched.append(True),
            timeout=0.2,
            **FAST,
        )
    assert switched == []


async def test_partitions_of_a_view_projection_give_the_views_of_the_whole(setup):
    last = await setup.activity(accounts=5, deposits=3)
    whole = setup.projections()[1]  # balances, a view per account
    parts = whole.partitions(3)
    assert [p.name for p in parts] == ["balances.0of3", "balances.1of3", "balances.2of3"]
    runners = [setup.runner([part], owner=f"r{n}") for n, part in enumerate(parts)]
    tasks = [asyncio.create_task(r.run()) for r in runners]
    try:
        for runner in runners:
            await runner.wait_for(last, timeout=5)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for number in range(5):
        events = await setup.store.load_events(f"acc-{number}")
        expected = Balance()
        for envelope in events:
            update_balance(expected, envelope)
        assert await setup.balances.load(f"acc-{number}") == expected
    for part in parts:
        assert await setup.checkpoints.position(part.name) == last
    assert await setup.checkpoints.position("balances") == 0


async def test_a_view_projection_partition_writes_only_its_views(setup):
    last = await setup.activity(accounts=6, deposits=1)
    part = setup.projections()[1].partitions(2)[0]
    runner = setup.runner([part])
    async with running(runner):
        await runner.wait_for(last, timeout=5)
    for number in range(6):
        view_id = f"acc-{number}"
        stored = await setup.balances.load(view_id)
        assert (stored is not None) == (partition_of(view_id, 2) == 0), view_id


async def test_aggregate_partitions_hand_each_aggregate_to_one_partition_in_order(setup):
    last = await setup.activity(accounts=6, deposits=2)
    inner = Positions(setup, "positions")
    by_partition: dict[str, list[tuple[str, int]]] = {}

    class Recording:
        name, sources, event_types = inner.name, inner.sources, inner.event_types

        async def handle(self, events) -> None:
            raise AssertionError("the partitions call the projection, not this")

    parts = partitions(Recording(), 2)
    assert [p.name for p in parts] == ["positions.0of2", "positions.1of2"]

    class Into:
        def __init__(self, part_name: str) -> None:
            self.part_name = part_name
            self.name, self.sources, self.event_types = "x", inner.sources, None

        async def handle(self, events) -> None:
            by_partition.setdefault(self.part_name, []).extend(
                (e.aggregate_id, e.sequence) for e in events
            )

    wrapped = [AggregatePartition(Into(p.name), n, 2) for n, p in enumerate(parts)]
    runner = setup.runner(wrapped)
    async with running(runner):
        await runner.wait_for(last, timeout=5)
    seen = [pair for pairs in by_partition.values() for pair in pairs]
    assert len(seen) == len(set(seen)) == last  # every event once
    for name, pairs in by_partition.items():
        index = int(name.split(".")[1].split("of")[0])
        assert {partition_of(aggregate, 2) for aggregate, _ in pairs} == {index}
        for aggregate in {a for a, _ in pairs}:
            sequences = [s for a, s in pairs if a == aggregate]
            assert sequences == sorted(sequences) == list(range(1, len(sequences) + 1))


def test_partitions_are_checked():
    setup = Setup()
    with pytest.raises(ConfigurationError, match="positive number of partitions"):
        partitions(setup.projections()[0], 0)
    with pytest.raises(ConfigurationError, match="positive number of partitions"):
        partitions(Positions(setup), True)
    with pytest.raises(ConfigurationError, match="not one of 0 to 1"):
        AggregatePartition(Positions(setup), 2, 2)
    assert partition_of("acc-1", 7) == partition_of("acc-1", 7) < 7


def stored_rows() -> list[SerializedEvent]:
    """Rows as backends read them: text event ids (SQLite) and UUIDs (PostgreSQL), metadata
    empty or not, and a deposit stored at an older version that an upcaster renames."""
    when = datetime(2026, 1, 2, tzinfo=UTC)
    ids = [uuid.UUID(int=n) for n in range(1, 5)]
    return [
        SerializedEvent("BankAccount", "a", 1, "AccountOpened", "1.0", '{"account_id":"a"}',
                        "{}", when, str(ids[0]), 1),
        SerializedEvent("BankAccount", "a", 2, "CustomerDepositedMoney", "0.9",
                        b'{"amt":"5.00","balance":"5.00"}', b'{"k":"v"}', when, ids[1], 2),
        SerializedEvent("BankAccount", "a", 3, "CustomerDepositedMoney", "1.0",
                        '{"amount":"1.00","balance":"6.00"}', b"{}", when, str(ids[2]), 3),
        SerializedEvent("BankAccount", "a", 4, "CustomerDepositedMoney", "0.9",
                        '{"amt":"2.00","balance":"8.00"}', "{}", when, str(ids[3]).upper(), 4),
    ]  # fmt: skip


def renamed_amount(payload: dict[str, Any]) -> dict[str, Any]:
    return {"amount": payload.pop("amt"), **payload}


def test_decode_all_gives_what_decode_gives_row_by_row():
    store = PersistedEventStore(MemoryEventRepository(), BankAccount).with_upcasters(
        [SemanticVersionEventUpcaster("CustomerDepositedMoney", "1.0", renamed_amount)]
    )
    rows = stored_rows()
    envelopes = store.decode_all(rows)
    assert envelopes == [store.decode(row) for row in rows]
    amounts = [e.payload.amount for e in envelopes if isinstance(e.payload, CustomerDepositedMoney)]
    assert amounts == [Decimal(5), Decimal(1), Decimal(2)]
    assert [e.event_id for e in envelopes] == [uuid.UUID(int=n) for n in range(1, 5)]
    assert envelopes[1].metadata == {"k": "v"}
    assert store.decode_all([]) == []


@pytest.mark.parametrize(
    ("index", "change", "error"),
    [
        (2, {"payload": '{"amount":"x"}'}, DeserializationError),
        (2, {"event_type": "Nope"}, DeserializationError),
        (1, {"metadata": b"[1]"}, DeserializationError),
        (3, {"event_id": "not-a-uuid"}, ValueError),
    ],
)
def test_decode_all_raises_the_error_of_the_first_row_that_does_not_decode(index, change, error):
    store = PersistedEventStore(MemoryEventRepository(), BankAccount).with_upcasters(
        [SemanticVersionEventUpcaster("CustomerDepositedMoney", "1.0", renamed_amount)]
    )
    rows = stored_rows()
    rows[index] = msgspec.structs.replace(rows[index], **change)
    with pytest.raises(error) as row_by_row:
        store.decode(rows[index])
    with pytest.raises(error) as page:
        store.decode_all(rows)
    assert str(page.value) == str(row_by_row.value)


class OtherAccount(BankAccount):
    aggregate_type: ClassVar[str] = "OtherAccount"


class Seen:
    """A projection of any sources that records the positions it is handed."""

    event_types = None

    def __init__(self, name: str, sources: Sequence[EventDecoder]) -> None:
        self.name, self.sources = name, tuple(sources)
        self.seen: list[int] = []

    async def handle(self, events: Sequence[EventEnvelope[Any]]) -> None:
        self.seen.extend(e.position for e in events)


class RowByRow:
    """An EventDecoder with no decode_all: the runner decodes its events one by one."""

    def __init__(self, store: PersistedEventStore[Any, Any, Any, Any]) -> None:
        self.aggregate_type, self.store = store.aggregate_type, store

    def decode(self, row: SerializedEvent):
        return self.store.decode(row)


async def test_a_runner_decodes_with_any_event_decoder_and_with_several_sources(setup):
    last = await setup.activity(accounts=2, deposits=3)
    other = PersistedEventStore(setup.repository, OtherAccount)
    await CqrsFramework(other, (), BankAccountServices()).execute("o-1", OpenAccount("o-1"))
    one, several = Seen("one", [RowByRow(setup.store)]), Seen("several", [setup.store, other])
    runner = setup.runner([one, several], batch_size=3)
    async with running(runner):
        await runner.wait_for(last + 1, timeout=5)
    assert one.seen == list(range(1, last + 1))
    assert several.seen == list(range(1, last + 2))


class LoggedReads(MemoryEventRepository):
    """A memory repository that logs each event it streams."""

    reads_in_background = True

    def __init__(self, log: list[tuple[str, int]]) -> None:
        super().__init__()
        self.log = log

    async def stream_all_events(self, aggregate_type, after_position=None):
        async for row in super().stream_all_events(aggregate_type, after_position):
            self.log.append(("read", row.position))
            yield row


class LoggedDecodes:
    def __init__(
        self, store: PersistedEventStore[Any, Any, Any, Any], log: list[tuple[str, int]]
    ) -> None:
        self.aggregate_type, self.store, self.log = store.aggregate_type, store, log

    def decode(self, row: SerializedEvent):
        return self.store.decode(row)

    def decode_all(self, rows):
        self.log.append(("decoded", rows[-1].position))
        return self.store.decode_all(rows)


@pytest.mark.parametrize("in_background", [True, False])
async def test_the_next_batch_is_read_before_decoding_unless_reads_are_not_in_the_background(
    in_background,
):
    log: list[tuple[str, int]] = []
    repository = LoggedReads(log)
    if not in_background:
        repository.reads_in_background = False
    await repository.open()
    store = PersistedEventStore(repository, BankAccount)
    bank = CqrsFramework(store, (), BankAccountServices())
    await bank.execute("a", OpenAccount("a"))
    for amount in range(1, 6):
        await bank.execute("a", DepositMoney(Decimal(amount)))
    projection = Seen("positions", [LoggedDecodes(store, log)])
    checkpoints = MemoryCheckpoints()
    runner = ProjectionRunner(
        repository, checkpoints, [projection], batch_size=2, poll_interval=0.02
    )
    async with running(runner):
        await runner.wait_for(6, timeout=5)
    assert projection.seen == [1, 2, 3, 4, 5, 6]
    first_decode = log.index(("decoded", 2))
    assert (log.index(("read", 3)) < first_decode) is in_background
    assert log.index(("read", 3)) < log.index(("decoded", 4))
