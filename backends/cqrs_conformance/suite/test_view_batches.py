"""Views in the events' database, written with their checkpoint: each batch's view changes and
checkpoint in one transaction under the fencing check (all or nothing), a reset that clears
the views with the checkpoint, a rebuild into new views while the old ones serve, and one
wake-up listener for all the projections of a runner."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from cqrs import AggregateConflict, LeaseLost, ProjectionRunner, default_codec
from cqrs.checkpoints import ViewCheckpointStore, ViewWrite
from cqrs.rebuild import SwitchableViews, rebuild, reset_views
from cqrs_conformance.bank_account import DepositMoney
from cqrs_conformance.runner_process import NAME, Totals
from cqrs_conformance.suite.test_runner import FAST, Bank, eventually, running


def writes_views(bank: Bank) -> ViewCheckpointStore:
    """The backend's checkpoint store as a ViewCheckpointStore, or a skip naming why not."""
    checkpoints = bank.checkpoints
    if not isinstance(checkpoints, ViewCheckpointStore):
        pytest.skip(
            f"{type(checkpoints).__name__} is no ViewCheckpointStore: its views are not "
            "written in one transaction with the checkpoint"
        )
    return checkpoints


def write(view_id: str, accounts: int, version: int, expected: int) -> ViewWrite:
    return ViewWrite(view_id, default_codec.encode(Totals(accounts=accounts)), version, expected)


async def stored(bank: Bank, view_id: str) -> tuple[int, int] | None:
    """The view's accounts and version, or None."""
    loaded = await bank.views.load_with_context(view_id)
    return None if loaded is None else (loaded[0].accounts, loaded[1].version)


async def test_a_batch_of_views_and_its_checkpoint_commit_together(bank):
    checkpoints = writes_views(bank)
    assert checkpoints.shares_database(bank.views)
    assert bank.projection().commits_with(checkpoints)
    lease = await checkpoints.acquire(NAME, "me", 60)
    assert lease is not None
    await checkpoints.save_with_views(
        lease, 7, bank.views, [write("a", 1, 5, 0), write("b", 2, 7, 0)]
    )
    assert await checkpoints.position(NAME) == 7
    assert (await stored(bank, "a"), await stored(bank, "b")) == ((1, 5), (2, 7))
    fetched = await checkpoints.fetch_views(bank.views, ["a", "missing", "b"])
    assert sorted(fetched) == ["a", "b"]
    assert fetched["b"][1] == 7
    assert default_codec.decode(fetched["b"][0], Totals) == Totals(accounts=2)  # type: ignore[arg-type]

    await checkpoints.save_with_views(lease, 9, bank.views, [write("a", 3, 9, 5)])
    assert await stored(bank, "a") == (3, 9)
    await checkpoints.save_with_views(lease, 12, bank.views, [])  # a batch with no view change
    assert await checkpoints.position(NAME) == 12


async def test_a_refused_view_write_stores_nothing_of_the_batch(bank):
    checkpoints = writes_views(bank)
    lease = await checkpoints.acquire(NAME, "me", 60)
    assert lease is not None
    await checkpoints.save_with_views(lease, 5, bank.views, [write("a", 1, 5, 0)])
    batches = [
        ("a", [write("c", 9, 8, 0), write("a", 9, 8, 4)]),  # "a" is at 5, not 4
        ("b", [write("a", 9, 8, 5), write("a2", 9, 8, 0), write("b", 9, 8, 3)]),  # no "b"
        ("a", [write("c", 9, 8, 0), write("a", 9, 8, 0)]),  # "a" exists: not new
    ]
    for refused, batch in batches:
        with pytest.raises(AggregateConflict, match=f"view '{refused}'"):
            await checkpoints.save_with_views(lease, 8, bank.views, batch)
        assert await stored(bank, "a") == (1, 5)
        assert await stored(bank, "c") is None
        assert await stored(bank, "a2") is None
        assert await checkpoints.position(NAME) == 5


async def test_a_stale_lease_stores_no_views(bank):
    checkpoints = writes_views(bank)
    stale = await checkpoints.acquire(NAME, "stale", 0.05)
    assert stale is not None
    await asyncio.sleep(0.2)
    current = await checkpoints.acquire(NAME, "current", 60)
    assert current is not None
    with pytest.raises(LeaseLost):
        await checkpoints.save_with_views(stale, 4, bank.views, [write("a", 1, 4, 0)])
    assert await stored(bank, "a") is None
    assert await checkpoints.position(NAME) == 0
    await checkpoints.save_with_views(current, 4, bank.views, [write("a", 2, 4, 0)])
    assert await stored(bank, "a") == (2, 4)


async def test_a_reset_clears_the_views_and_the_running_runner_rebuilds_them(bank):
    writes_views(bank)
    last = await bank.activity(accounts=2)
    runner = bank.runner(batch_size=4)
    async with running(runner):
        await runner.wait_for(last, timeout=20)
        token = runner.status()[NAME].token
        await reset_views(bank.checkpoints, bank.projection())
        assert await bank.views.load("all") is None or runner.status()[NAME].token > token

        async def rebuilt() -> bool:
            status = runner.status()[NAME]
            return bool(status.token > token and status.checkpoint >= last)

        await eventually(rebuilt, 20, "the fenced runner takes the lease again and rebuilds")
    await bank.assert_views_equal_a_replay()


async def test_a_reset_leaves_nothing_behind(bank):
    writes_views(bank)
    last = await bank.activity(accounts=1)
    runner = bank.runner()
    async with running(runner):
        await runner.wait_for(last, timeout=20)
    assert await bank.views.load("all") is not None
    await reset_views(bank.checkpoints, bank.projection())
    assert await bank.views.load("all") is None
    assert await bank.views.load("acc-0") is None
    assert await bank.checkpoints.position(NAME) == 0


async def test_a_rebuild_into_new_views_switches_once_caught_up_while_the_old_ones_serve(
    backend, bank
):
    last = await bank.activity(accounts=3)
    old = bank.runner()
    serving = SwitchableViews(bank.views)
    new_views = bank.repository.view_repository(Totals, backend.name("totals_v2"))
    await new_views.create_schema()
    seen_at_switch: list[object] = []

    def switch() -> None:
        # the old views are complete and still served until this call
        seen_at_switch.append(serving.current)
        serving.switch(new_views)

    async with running(old):
        await old.wait_for(last, timeout=20)
        before = await serving.load("all")
        assert before is not None
        more = await bank.app.execute("acc-0", DepositMoney(Decimal(7)))  # during the rebuild
        checkpoint = await rebuild(
            bank.repository,
            bank.checkpoints,
            bank.projection().renamed("totals-v2", new_views),
            switch,
            timeout=60,
            batch_size=3,
            **FAST,
        )
        assert seen_at_switch == [bank.views]
        assert serving.current is new_views
        assert checkpoint >= more[-1].position
        await old.wait_for(more[-1].position, timeout=20)
        assert old.status()[NAME].state == "running"  # the old projection never stopped
    expected = await bank.replay()
    for key, view in expected.items():
        assert await serving.load(key) == view, key  # the new views
    await bank.assert_views_equal_a_replay()  # and the old ones, kept up to date meanwhile


class Recorder:
    """A projection that records the positions it is handed."""

    def __init__(self, name: str, bank: Bank) -> None:
        self.name, self.sources, self.event_types = name, (bank.store,), None
        self.seen: list[int] = []

    async def handle(self, events) -> None:
        self.seen.extend(e.position for e in events)


class CountingListeners:
    """The backend's repository, counting the listeners asked of it."""

    def __init__(self, repository) -> None:
        self._repository = repository
        self.listeners = 0

    def wake_ups(self):
        self.listeners += 1
        return self._repository.wake_ups()

    def __getattr__(self, name: str):
        return getattr(self._repository, name)


async def test_a_runner_shares_one_listener_among_its_projections(bank):
    last = await bank.activity(accounts=1)
    projections = [Recorder(f"recorder-{n}", bank) for n in range(3)]
    repository = CountingListeners(bank.repository)
    # Polling every 30 s: only a pushed wake-up brings the next commit within the test.
    runner = ProjectionRunner(
        repository,
        bank.checkpoints,
        projections,
        poll_interval=30,
        retry_delay=0.001,
    )
    async with running(runner):
        await runner.wait_for(last, timeout=20)
        await asyncio.sleep(0.3)  # every projection waits for a wake-up now
        more = await bank.app.execute("acc-0", DepositMoney(Decimal(1)))
        position = more[-1].position

        async def everyone_has_it() -> bool:
            return all(position in p.seen for p in projections)

        await eventually(everyone_has_it, 10, "a commit reaches every projection")
    assert repository.listeners == 1
    expected = [e.position async for e in bank.store.stream_all_events()]
    assert all(p.seen == expected for p in projections)


async def test_partitions_run_by_two_runners_give_the_views_of_a_replay(bank):
    last = await bank.activity(accounts=4)
    parts = bank.projection().partitions(2)
    runners = [bank.runner(part, owner=f"part-{n}", batch_size=3) for n, part in enumerate(parts)]
    async with running(runners[0]), running(runners[1]):
        for runner in runners:
            await runner.wait_for(last, timeout=20)
        states = {r.status()[p.name].state for r, p in zip(runners, parts, strict=True)}
        assert states == {"running"}
    await bank.assert_views_equal_a_replay()
    for part in parts:
        assert await bank.checkpoints.position(part.name) == last
