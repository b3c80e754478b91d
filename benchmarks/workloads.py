"""The workloads, written once over the primitives every side implements.

A *side* is one way of doing the work on one database: ``framework`` (CqrsFramework and
PersistedEventStore), ``raw`` (the same statements straight on the driver) or ``peer`` (the
``eventsourcing`` package). Each side implements :class:`Side`; each workload below seeds its
data through the side (untimed), then returns the operation the harness times.

Workloads and units (the ids and units are fixed; they appear in the JSON):

==============  ============  ===============================================================
id              unit          one timed unit
==============  ============  ===============================================================
commit_1        commands/s    load an aggregate of 10 events, handle ``DepositMoney``,
                              commit its 1 event (each command on a different aggregate)
commit_10       events/s      one ``OpenWithDeposits`` on a new aggregate: 10 events in one
                              commit
load_100        loads/s       load (replay) an aggregate of 100 events
load_1000       loads/s       load (replay) an aggregate of 1000 events
load_snapshot   loads/s       load an aggregate of 1000 events with a snapshot every 100:
                              read the snapshot (taken at 1000) and the events after it
concurrent_8    commands/s    ``commit_1`` from 8 concurrent tasks, each on its own
                              aggregates (the peer, being synchronous, uses 8 threads)
replay_10k      events/s      ``QueryReplay`` of 10,000 events (100 aggregates of 100) into
                              a new view table of ``BankAccountView`` s
catchup_10k     events/s      catch-up over 10,000 stored events (100 aggregates of 100)
                              from a new checkpoint table, one step per side: framework, a
                              ``ProjectionRunner`` with a no-op projection (``run()`` until
                              the first read that reaches the end, by ``wait_for``; batches
                              of the repository's ``page_size``, each read (the next one read
                              while this one is handled), decoded and handed over, the
                              checkpoint saved at the end; one lease); raw, the same events
                              read through the raw driver with the backend's own page
                              statement and page size until a short page, undecoded (the
                              backend's ``stream_all_events`` paging without the framework;
                              ``python -m benchmarks.catchup`` compares with the backend's
                              own ``stream_all_events`` instead)
view_upsert     events/s      a ``ViewProjection`` keyed by event (a view per event, so one
                              view write per event: a load and an insert) into a new view
                              table in the events' database, over 2,000 stored events (20
                              aggregates of 100), by ``run()`` as for ``catchup_10k``; each
                              batch's views and checkpoint in one transaction; framework
                              only
==============  ============  ===============================================================
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "SIDES",
    "SNAPSHOT_EVERY",
    "UNITS",
    "WORKLOADS",
    "Operation",
    "PerRound",
    "Side",
    "Sizes",
    "commit_groups_with_tasks",
    "prepare",
]

WORKLOADS = (
    "commit_1",
    "commit_10",
    "load_100",
    "load_1000",
    "load_snapshot",
    "concurrent_8",
    "replay_10k",
    "catchup_10k",
    "view_upsert",
)
"""Every workload id, in the order they run and print."""

UNITS = {
    "commit_1": "commands/s",
    "commit_10": "events/s",
    "load_100": "loads/s",
    "load_1000": "loads/s",
    "load_snapshot": "loads/s",
    "concurrent_8": "commands/s",
    "replay_10k": "events/s",
    "catchup_10k": "events/s",
    "view_upsert": "events/s",
}
"""The unit each workload's rates are given in."""

SIDES = {"catchup_10k": ("framework", "raw"), "view_upsert": ("framework",)}
"""The sides that run the workloads not every side has (the others are not opened)."""

SNAPSHOT_EVERY = {"load_snapshot": 100}
"""Workloads whose sides snapshot, and how often (in events)."""

SEED_EVENTS = 10
"""Events in each aggregate a ``commit_1``/``concurrent_8`` command runs on (new aggregates
are seeded, untimed, before each round)."""

TASKS = 8
REPLAY_AGGREGATES = 100
REPLAY_EVENTS_EACH = 100

Operation = Callable[[], Awaitable[int]]
"""A timed step: does some of a round's work and returns how many units it did."""


@dataclass(frozen=True)
class Sizes:
    """How much work one repetition does, and how many repetitions run.

    ``commit_1``/``concurrent_8``: commands per repetition; ``commit_10``: new aggregates
    (10 events each) per repetition; ``load_*``: loads per repetition. ``replay_10k`` always
    replays 10,000 events unless ``replay_events`` says otherwise (tests shrink it); likewise
    ``catchup_events`` for ``catchup_10k`` and ``view_events`` for ``view_upsert``.
    """

    commit_1: int
    commit_10: int
    load_100: int
    load_1000: int
    load_snapshot: int
    concurrent_8: int
    repetitions: int
    warmups: int = 1
    replay_events: int = REPLAY_AGGREGATES * REPLAY_EVENTS_EACH
    catchup_events: int = REPLAY_AGGREGATES * REPLAY_EVENTS_EACH
    view_events: int = 2_000


class Side(Protocol):
    """The primitives a side offers; every method does its work on the side's own tables."""

    name: str

    async def open(self) -> None:
        """Connect and create the side's (new, empty) tables."""

    async def close(self) -> None:
        """Disconnect (the harness drops the tables afterwards)."""

    async def create(self, aggregate_id: str, events: int) -> None:
        """One command creating ``aggregate_id`` with ``events`` events (opened + deposits)."""

    async def grow(self, aggregate_id: str, events: int) -> None:
        """One command adding ``events`` deposits to an existing aggregate."""

    async def deposit(self, aggregate_id: str) -> None:
        """Load the aggregate, handle ``DepositMoney``, commit the one event."""

    async def load(self, aggregate_id: str) -> object:
        """Rebuild the aggregate's state; return it."""

    async def commit_groups(self, groups: list[list[str]]) -> None:
        """Run one task per group, concurrently; each deposits into its aggregates in turn."""

    async def prepare_replay(self, table: str) -> Operation | None:
        """Make an empty view table; return the replay of every event into it (returning
        how many events it dispatched), or None if this side has no such feature."""

    async def prepare_catchup(self, table: str, events: int) -> list[Operation] | None:
        """Start a catch-up over the ``events`` stored events from position 0 (``table``: a
        new checkpoint table, if the side keeps one); return its steps, one batch or page each,
        each returning how many events it read; or None if this side has no such feature."""

    async def prepare_view_upsert(self, table: str, events: int) -> list[Operation] | None:
        """Make an empty view table; return the steps of a projection writing one view per
        stored event (``events`` of them) into it, each returning how many events it
        applied; or None."""


async def commit_groups_with_tasks(side: Side, groups: list[list[str]]) -> None:
    """:meth:`Side.commit_groups` for async sides: one asyncio task per group."""

    async def run(group: list[str]) -> None:
        for aggregate_id in group:
            await side.deposit(aggregate_id)

    async with asyncio.TaskGroup() as tasks:
        for group in groups:
            tasks.create_task(run(group))


def balance_of(state: object) -> object:
    """The balance of a loaded state (the bench account or the peer's aggregate)."""
    return getattr(state, "balance", None)


PerRound = Callable[[int], Awaitable[list[Operation] | None]]
"""Prepares round ``n`` (untimed) and returns its steps: the operations to time, which the
harness interleaves with the other sides' steps; or None if the side cannot do the
workload."""

STEP = {
    "commit_1": 4,
    "commit_10": 2,
    "load_100": 3,
    "load_1000": 1,
    "load_snapshot": 10,
    "concurrent_8": 2,
}
"""Units of work per step (commands, creations, loads; ``concurrent_8``: commands per task):
steps are a few milliseconds, so that the sides share the machine's conditions."""


async def prepare(workload: str, side: Side, sizes: Sizes) -> PerRound:
    """Seed ``side`` for ``workload`` (untimed) and return its :data:`PerRound`."""
    try:
        preparer = _PREPARERS[workload]
    except KeyError:
        msg = f"unknown workload {workload!r}; known: {', '.join(WORKLOADS)}"
        raise ValueError(msg) from None
    return await preparer(side, sizes)


def _chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


async def _commit_1(side: Side, sizes: Sizes) -> PerRound:
    async def for_round(index: int) -> list[Operation]:
        ids = [f"c1-{index}-{i}" for i in range(sizes.commit_1)]
        for aggregate_id in ids:
            await side.create(aggregate_id, SEED_EVENTS)

        def step(chunk: list[str]) -> Operation:
            async def commit_1() -> int:
                for aggregate_id in chunk:
                    await side.deposit(aggregate_id)
                return len(chunk)

            return commit_1

        return [step(chunk) for chunk in _chunks(ids, STEP["commit_1"])]

    return for_round


async def _commit_10(side: Side, sizes: Sizes) -> PerRound:
    async def for_round(index: int) -> list[Operation]:
        ids = [f"c10-{index}-{i}" for i in range(sizes.commit_10)]

        def step(chunk: list[str]) -> Operation:
            async def commit_10() -> int:
                for aggregate_id in chunk:
                    await side.create(aggregate_id, 10)
                return 10 * len(chunk)

            return commit_10

        return [step(chunk) for chunk in _chunks(ids, STEP["commit_10"])]

    return for_round


async def _load(side: Side, workload: str, events: int, loads: int) -> PerRound:
    aggregate_id = workload
    # Commits of 100 events: with snapshots every 100, every side snapshots at 1000.
    await side.create(aggregate_id, min(events, 100))
    for _ in range(events // 100 - 1):
        await side.grow(aggregate_id, 100)
    expected = balance_of(await side.load(aggregate_id))

    def step(count: int) -> Operation:
        async def load() -> int:
            state = None
            for _ in range(count):
                state = await side.load(aggregate_id)
            if balance_of(state) != expected:
                msg = f"{side.name} loaded balance {balance_of(state)}, expected {expected}"
                raise AssertionError(msg)
            return count

        return load

    size = STEP[workload]
    steps = [step(min(size, loads - done)) for done in range(0, loads, size)]
    return _same(steps)


async def _load_100(side: Side, sizes: Sizes) -> PerRound:
    return await _load(side, "load_100", 100, sizes.load_100)


async def _load_1000(side: Side, sizes: Sizes) -> PerRound:
    return await _load(side, "load_1000", 1000, sizes.load_1000)


async def _load_snapshot(side: Side, sizes: Sizes) -> PerRound:
    return await _load(side, "load_snapshot", 1000, sizes.load_snapshot)


async def _concurrent_8(side: Side, sizes: Sizes) -> PerRound:
    count = max(sizes.concurrent_8 // TASKS, 1)

    async def for_round(index: int) -> list[Operation]:
        groups = [[f"cc-{index}-{task}-{i}" for i in range(count)] for task in range(TASKS)]
        for group in groups:
            for aggregate_id in group:
                await side.create(aggregate_id, SEED_EVENTS)
        size = STEP["concurrent_8"]

        def step(start: int) -> Operation:
            part = [group[start : start + size] for group in groups]

            async def concurrent_8() -> int:
                await side.commit_groups(part)
                return sum(len(group) for group in part)

            return concurrent_8

        return [step(start) for start in range(0, count, size)]

    return for_round


async def _replay_10k(side: Side, sizes: Sizes) -> PerRound:
    each = min(REPLAY_EVENTS_EACH, sizes.replay_events)
    aggregates = max(sizes.replay_events // each, 1)
    for index in range(aggregates):
        await side.create(f"r-{index}", each)
    total = aggregates * each

    async def for_round(index: int) -> list[Operation] | None:
        replay = await side.prepare_replay(f"views_{index}")
        if replay is None:
            return None

        async def replay_10k() -> int:
            count = await replay()
            if count != total:
                msg = f"{side.name} replayed {count} events, expected {total}"
                raise AssertionError(msg)
            return count

        return [replay_10k]

    return for_round


async def _seed_events(side: Side, events: int, prefix: str) -> int:
    each = min(REPLAY_EVENTS_EACH, events)
    aggregates = max(events // each, 1)
    for index in range(aggregates):
        await side.create(f"{prefix}-{index}", each)
    return aggregates * each


def _counted(side: Side, steps: list[Operation], total: int) -> list[Operation]:
    """``steps``, the last one checking that they did ``total`` units in all."""
    done = 0

    def wrap(operation: Operation, last: bool) -> Operation:
        async def step() -> int:
            nonlocal done
            count = await operation()
            done += count
            if last and done != total:
                msg = f"{side.name} handled {done} events, expected {total}"
                raise AssertionError(msg)
            return count

        return step

    return [wrap(operation, index == len(steps) - 1) for index, operation in enumerate(steps)]


async def _catchup_10k(side: Side, sizes: Sizes) -> PerRound:
    total = await _seed_events(side, sizes.catchup_events, "cu")

    async def for_round(index: int) -> list[Operation] | None:
        steps = await side.prepare_catchup(f"cp_{index}", total)
        return None if steps is None else _counted(side, steps, total)

    return for_round


async def _view_upsert(side: Side, sizes: Sizes) -> PerRound:
    total = await _seed_events(side, sizes.view_events, "vu")

    async def for_round(index: int) -> list[Operation] | None:
        steps = await side.prepare_view_upsert(f"upserts_{index}", total)
        return None if steps is None else _counted(side, steps, total)

    return for_round


def _same(steps: list[Operation]) -> PerRound:
    async def for_round(index: int) -> list[Operation]:  # noqa: ARG001 - every round is alike
        return steps

    return for_round


_PREPARERS: dict[str, Callable[[Side, Sizes], Awaitable[PerRound]]] = {
    "commit_1": _commit_1,
    "commit_10": _commit_10,
    "load_100": _load_100,
    "load_1000": _load_1000,
    "load_snapshot": _load_snapshot,
    "concurrent_8": _concurrent_8,
    "replay_10k": _replay_10k,
    "catchup_10k": _catchup_10k,
    "view_upsert": _view_upsert,
}
