"""The projection runner on every backend, with the backend's checkpoint store and views in
the same database: catch-up then live, exact resume, fencing, and (where several processes
can share the store) one runner at a time across processes, takeover after a SIGKILL and
nothing lost or applied twice."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from decimal import Decimal

import pytest

from cqrs import CqrsFramework, PersistedEventRepository, PersistedEventStore, ProjectionRunner
from cqrs_conformance.bank_account import (
    BankAccount,
    BankAccountServices,
    DepositMoney,
    OpenAccount,
    WithdrawMoney,
)
from cqrs_conformance.factory import reference
from cqrs_conformance.runner_process import NAME, Totals, keys, totals_projection, update

FAST = {"poll_interval": 0.02, "retry_delay": 0.001}


class Bank:
    """The bank account app on the backend under test, with the "totals" views and the
    checkpoints in the events' database."""

    def __init__(self, backend, repository: PersistedEventRepository) -> None:
        self.backend, self.repository = backend, repository
        self.tables = {
            "events": backend.name("events"),
            "snapshots": backend.name("snapshots"),
            "checkpoints": backend.name("projections"),
            "views": backend.name("totals"),
        }
        self.store = PersistedEventStore(repository, BankAccount)
        self.app = CqrsFramework(self.store, (), BankAccountServices())
        self.views = repository.view_repository(Totals, self.tables["views"])
        self.checkpoints = repository.checkpoint_store(self.tables["checkpoints"])
        self._accounts = itertools.count()

    async def create_schema(self) -> None:
        await self.views.create_schema()
        await self.checkpoints.create_schema()

    def projection(self):
        return totals_projection(self.store, self.views)

    def runner(self, projection=None, **options) -> ProjectionRunner:
        return ProjectionRunner(
            self.repository,
            self.checkpoints,
            [self.projection() if projection is None else projection],
            **{**FAST, **options},
        )

    async def activity(self, accounts: int = 2, deposits: int = 3) -> int:
        """Open ``accounts`` new accounts with deposits and a withdrawal each; return the
        position of the last event."""
        last = 0
        for _ in range(accounts):
            name = f"acc-{next(self._accounts)}"
            await self.app.execute(name, OpenAccount(name))
            for amount in range(1, deposits + 1):
                await self.app.execute(name, DepositMoney(Decimal(amount)))
            envelopes = await self.app.execute(name, WithdrawMoney(Decimal(1), "ATM-1"))
            last = envelopes[-1].position
        return last

    async def replay(self) -> dict[str, Totals]:
        expected: dict[str, Totals] = {}
        async for envelope in self.store.stream_all_events():
            for key in keys(envelope):
                update(expected.setdefault(key, Totals()), envelope)
        return expected

    async def assert_views_equal_a_replay(self) -> None:
        expected = await self.replay()
        assert expected
        for key, view in expected.items():
            assert await self.views.load(key) == view, key
        everything = expected["all"].positions
        assert len(everything) == len(set(everything))


@pytest.fixture
async def bank(backend, repository) -> Bank:
    state = Bank(backend, repository)
    await state.create_schema()
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


async def eventually(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not await condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {seconds:g} s: {what}")
        await asyncio.sleep(0.01)


class Spy:
    """A projection of the same name that only records the positions it is handed."""

    def __init__(self, bank: Bank) -> None:
        self.name, self.sources, self.event_types = NAME, (bank.store,), None
        self.seen: list[int] = []

    async def handle(self, events) -> None:
        self.seen.extend(e.position for e in events)


# -- one process ------------------------------------------------------------------------------


async def test_runner_catches_up_then_follows_live(bank):
    last = await bank.activity(accounts=3)
    runner = bank.runner(batch_size=4)
    async with running(runner):
        await runner.wait_for(last, timeout=20)
        await bank.assert_views_equal_a_replay()
        status = runner.status()[NAME]
        assert status.state == "running"
        assert status.checkpoint == last
        assert status.batches >= 4  # caught up in batches, not in one read
        for _ in range(3):
            more = await bank.app.execute("acc-0", DepositMoney(Decimal(5)))
            await runner.wait_for(more[-1].position, timeout=20)
        await bank.assert_views_equal_a_replay()
        assert runner.status()[NAME].checkpoint == more[-1].position
    assert await bank.checkpoints.position(NAME) == more[-1].position


async def test_resumes_from_its_checkpoint_exactly(bank, backend):
    last = await bank.activity(accounts=2)
    runner = bank.runner(batch_size=3)
    task = asyncio.create_task(runner.run())
    await runner.wait_for(last, timeout=20)
    runner.stop()  # a clean stop: the checkpoint is saved, the lease released
    await asyncio.wait_for(task, 20)
    assert runner.status()[NAME].state == "stopped"
    assert await bank.checkpoints.position(NAME) == last

    # another client, as another process would: only what came after the checkpoint
    other = Bank(backend, await backend.open_repository())
    spy = Spy(other)
    more = [await bank.app.execute("acc-0", DepositMoney(Decimal(n))) for n in (1, 2)]
    resumed = other.runner(spy, batch_size=1)
    async with running(resumed):
        await resumed.wait_for(more[-1][-1].position, timeout=20)
        later = await bank.app.execute("acc-1", DepositMoney(Decimal(3)))
        await resumed.wait_for(later[-1].position, timeout=20)
    assert spy.seen == [e.position for e in [*more[0], *more[1], *later]]


async def test_a_paused_runner_is_fenced_and_its_batch_is_applied_once(bank):
    last = await bank.activity(accounts=2)
    entered, resume = asyncio.Event(), asyncio.Event()
    inner = bank.projection()

    class Pausing:
        name, sources, event_types = inner.name, inner.sources, inner.event_types

        async def handle(self, events) -> None:
            if not resume.is_set():
                entered.set()
                await resume.wait()  # a pause (GC, a stopped VM) longer than the lease
            await inner.handle(events)

    runner = bank.runner(Pausing(), owner="paused", batch_size=5, lease_ttl=0.3)
    async with running(runner):
        await asyncio.wait_for(entered.wait(), 20)
        await asyncio.sleep(0.6)  # the lease expires: a holder in handle() cannot renew
        intruder = await bank.checkpoints.acquire(NAME, "intruder", 60)
        assert intruder is not None
        assert intruder.position == 0
        resume.set()  # the paused runner writes its views and tries to save its checkpoint

        async def standby() -> bool:
            return bool(runner.status()[NAME].state == "standby")

        await eventually(standby, 20, "the fenced runner goes to standby")
        assert await bank.checkpoints.position(NAME) == 0  # its save changed nothing
        await bank.checkpoints.release(intruder)
        await runner.wait_for(last, timeout=20)  # it takes the lease again and redoes it
        assert runner.status()[NAME].token > intruder.token
    await bank.assert_views_equal_a_replay()  # the batch written twice took effect once


async def test_one_runner_at_a_time_in_one_process(bank):
    last = await bank.activity(accounts=1)
    first = bank.runner(owner="first", lease_ttl=0.5)
    second = bank.runner(owner="second", lease_ttl=0.5)
    async with running(first), running(second):
        await eventually(lambda: _caught_up(bank, last), 20, "one of the runners catches up")
        await asyncio.sleep(0.3)
        states = sorted(r.status()[NAME].state for r in (first, second))
        assert states == ["running", "standby"]
    await bank.assert_views_equal_a_replay()


async def test_a_busy_runner_keeps_its_lease(bank):
    """Batch after batch for several lease ttls: the runner renews, so the other runner
    stays on standby and never handles a batch."""
    await bank.activity(accounts=1)
    inner = bank.projection()
    handled: list[tuple[str, float, float]] = []

    class Slow:
        def __init__(self, owner: str) -> None:
            self.owner = owner
            self.name, self.sources, self.event_types = NAME, inner.sources, None

        async def handle(self, events) -> None:
            start = time.monotonic()
            await asyncio.sleep(0.02)
            await inner.handle(events)
            handled.append((self.owner, start, time.monotonic()))

    ttl = 0.4
    runners = [bank.runner(Slow(o), owner=o, lease_ttl=ttl, batch_size=1) for o in "ab"]
    async with running(runners[0]):
        await eventually(lambda: _caught_up(bank, 1), 20, "the first runner starts")
        async with running(runners[1]):
            deadline = time.monotonic() + ttl * 4
            while time.monotonic() < deadline:  # never idle: always a batch to handle
                await bank.app.execute("acc-0", DepositMoney(Decimal(1)))
                await asyncio.sleep(0.02)  # about as fast as it is handled
            assert {owner for owner, _, _ in handled} == {"a"}
            assert runners[1].status()[NAME].state == "standby"
            last = (await bank.store.load_events("acc-0"))[-1].position
            await runners[0].wait_for(last, timeout=20)
    assert {owner for owner, _, _ in handled} == {"a"}
    await bank.assert_views_equal_a_replay()


async def _caught_up(bank: Bank, position: int) -> bool:
    return await bank.checkpoints.position(NAME) >= position


# -- several processes ------------------------------------------------------------------------


@dataclass
class Interval:
    owner: str
    start: float
    end: float | None


def factory_reference(backend) -> str:
    spec = reference(backend.factory)
    if spec is None:
        pytest.fail(
            f"the {backend.id} factory has the multiprocess capability, so it must be a "
            "module-level object of an importable module (the runner process rebuilds it)"
        )
    return spec


class RunnerProcess:
    """``runner_process.py`` running the "totals" projection in its own process."""

    def __init__(self, bank: Bank, owner: str, *, ttl: float, delay: float) -> None:
        workdir = bank.backend.workdir
        self.owner = owner
        self.log = workdir / f"{owner}.log"
        self.stderr = workdir / f"{owner}.err"
        t = bank.tables
        command = [
            sys.executable,
            "-m",
            "cqrs_conformance.runner_process",
            factory_reference(bank.backend),
            str(workdir),
            t["events"],
            t["snapshots"],
            t["checkpoints"],
            t["views"],
            owner,
            str(self.log),
            f"--ttl={ttl}",
            "--batch=5",
            f"--delay={delay}",
        ]
        # The child imports what this process can: the factory's module, the packages.
        environment = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        with self.stderr.open("ab") as errors:
            self.process = subprocess.Popen(
                command, stdout=subprocess.DEVNULL, stderr=errors, env=environment
            )
        self.killed_at: float | None = None

    def lines(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [line.split() for line in self.log.read_text().splitlines()]

    def in_batch(self) -> bool:
        lines = self.lines()
        return bool(lines) and lines[-1][0] == "start"

    def intervals(self) -> list[Interval]:
        found: list[Interval] = []
        for what, owner, at, *_ in self.lines():
            if what == "start":
                found.append(Interval(owner, float(at), None))
            else:
                found[-1].end = float(at)
        if found and found[-1].end is None:  # killed in the middle, or still running
            found[-1].end = self.killed_at or float("inf")
        return found

    def kill(self) -> float:
        """SIGKILL it; return when."""
        self.process.send_signal(signal.SIGKILL)
        self.killed_at = killed_at = time.monotonic()
        self.process.wait()
        return killed_at

    async def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        for _ in range(3000):
            if (code := self.process.poll()) is not None:
                return code
            await asyncio.sleep(0.01)
        self.process.kill()
        return self.process.wait()

    def errors(self) -> str:
        return self.stderr.read_text() if self.stderr.exists() else ""


class Harness:
    """The runner processes and background writers of a test, stopped at its end."""

    def __init__(self) -> None:
        self.processes: list[RunnerProcess] = []
        self.writers: list[Writer] = []

    def start(self, bank: Bank, owner: str, *, ttl: float, delay: float) -> RunnerProcess:
        process = RunnerProcess(bank, owner, ttl=ttl, delay=delay)
        self.processes.append(process)
        return process

    def write(self, bank: Bank, accounts: list[str], pause: float) -> Writer:
        writer = Writer(bank, accounts, pause)
        self.writers.append(writer)
        return writer

    async def close(self) -> None:
        for writer in self.writers:
            writer.cancel()
        for process in self.processes:
            if process.process.poll() is None:
                process.process.kill()
                process.process.wait()


@pytest.fixture
async def harness():
    state = Harness()
    yield state
    await state.close()


def overlaps(intervals: list[Interval]) -> list[tuple[Interval, Interval]]:
    ordered = sorted(intervals, key=lambda interval: interval.start)
    return [
        (a, b)
        for a, b in itertools.pairwise(ordered)
        if a.owner != b.owner and a.end is not None and b.start < a.end
    ]


class Writer:
    """Commits deposits in the background until stopped; ``last`` is the newest position."""

    def __init__(self, bank: Bank, accounts: list[str], pause: float) -> None:
        self.bank, self.accounts, self.pause, self.last = bank, accounts, pause, 0
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        for account in itertools.cycle(self.accounts):
            if self._stop.is_set():
                return
            envelopes = await self.bank.app.execute(account, DepositMoney(Decimal(1)))
            self.last = envelopes[-1].position
            await asyncio.sleep(self.pause)

    async def stop(self) -> int:
        self._stop.set()
        await self._task
        return self.last

    def cancel(self) -> None:
        self._task.cancel()


async def wait_for_process(condition, seconds: float, what: str, *running) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        for process in running:
            if process.process.poll() is not None and process.killed_at is None:
                pytest.fail(f"{process.owner} exited: {process.errors()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"not within {seconds:g} s: {what}")
        await asyncio.sleep(0.005)


def latest_starter(processes: list[RunnerProcess]) -> RunnerProcess:
    """The process that started a batch last: the lease holder (only one runs at a time).

    Asking ``in_batch()`` again instead would race: a batch that has just ended would make
    the stand-by look like the holder, and the test would kill the wrong process.
    """
    started = [(i.start, n) for n, p in enumerate(processes) for i in p.intervals()]
    assert started, "no process has started a batch"
    return processes[max(started)[1]]


async def test_two_processes_never_run_at_once_and_one_takes_over_when_the_other_dies(
    backend, bank, harness
):
    backend.requires("multiprocess")
    scale = getattr(backend.factory, "stress_scale", 1.0)
    await bank.activity(accounts=3, deposits=max(2, int(8 * scale)))
    ttl = 1.5
    one, two = (harness.start(bank, owner, ttl=ttl, delay=0.03) for owner in ("one", "two"))
    writer = harness.write(bank, ["acc-0", "acc-1", "acc-2"], pause=0.02)
    await wait_for_process(
        lambda: one.in_batch() or two.in_batch(), 60, "a runner starts a batch", one, two
    )
    await asyncio.sleep(1.0)  # both processes up: one runs, the other stands by
    await wait_for_process(
        lambda: one.in_batch() or two.in_batch(), 20, "a batch in progress", one, two
    )
    holder = latest_starter([one, two])  # the lease holder, even if its batch just ended
    survivor = two if holder is one else one
    killed_at = holder.kill()  # mid-batch: its views may be half written, its checkpoint is not
    assert survivor.process.poll() is None

    def taken_over() -> bool:
        return any(i.start > killed_at for i in survivor.intervals())

    await wait_for_process(taken_over, ttl * 10, "the survivor takes over", survivor)
    takeover = min(i.start for i in survivor.intervals() if i.start > killed_at)
    seconds = takeover - killed_at
    print(f"takeover {seconds:.2f} s after SIGKILL (lease ttl {ttl} s)")  # noqa: T201 - for -s
    assert seconds < ttl * 2 + 1.0

    last = await writer.stop()
    await eventually(lambda: _caught_up(bank, last), 60, "the survivor catches up")
    assert await survivor.stop() == 0, survivor.errors()
    intervals = one.intervals() + two.intervals()
    assert {i.owner for i in intervals} == {"one", "two"}
    assert overlaps(intervals) == []
    await bank.assert_views_equal_a_replay()


@pytest.mark.stress
async def test_runners_killed_again_and_again_lose_nothing_and_apply_nothing_twice(
    backend, bank, harness: Harness
):
    backend.requires("multiprocess")
    scale = getattr(backend.factory, "stress_scale", 1.0)
    await bank.activity(accounts=4, deposits=max(2, int(10 * scale)))
    ttl = 1.0
    writer = harness.write(bank, [f"acc-{n}" for n in range(4)], pause=0.01)
    generation = itertools.count()

    def start() -> RunnerProcess:
        return harness.start(bank, f"r{next(generation)}", ttl=ttl, delay=0.02)

    alive = [start(), start(), start()]
    takeovers: list[float] = []
    for _ in range(max(2, int(6 * scale))):
        await wait_for_process(
            lambda: any(p.in_batch() for p in alive), 60, "a batch in progress", *alive
        )
        holder = latest_starter(alive)
        killed_at = holder.kill()
        alive.remove(holder)
        alive.append(start())

        def taken_over(after: float = killed_at) -> bool:
            return any(i.start > after for p in alive for i in p.intervals())

        await wait_for_process(taken_over, ttl * 10, "a takeover", *alive)
        first = min(i.start for p in alive for i in p.intervals() if i.start > killed_at)
        takeovers.append(first - killed_at)
    last = await writer.stop()
    await eventually(lambda: _caught_up(bank, last), 120, "the runners catch up")
    for process in alive:
        assert await process.stop() == 0, process.errors()
    print("takeovers after SIGKILL (s):", " ".join(f"{t:.2f}" for t in takeovers))  # noqa: T201
    assert max(takeovers) < ttl * 2 + 1.0
    assert overlaps([i for p in harness.processes for i in p.intervals()]) == []
    await bank.assert_views_equal_a_replay()
