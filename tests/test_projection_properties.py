"""A Hypothesis state machine: commits, projection batches, crashes (after the views were
written, or half-way through a batch, before the checkpoint) and restarts in any order end
with views equal to a full replay: in memory with MemoryCheckpoints, and on every backend
with its own checkpoint store and views in the events' database."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from cqrs import (
    Aggregate,
    CheckpointStore,
    CqrsFramework,
    DomainEvent,
    MemoryCheckpoints,
    PersistedEventRepository,
    PersistedEventStore,
    ProjectionRunner,
    ViewProjection,
    ViewRepository,
)
from cqrs_memory import MemoryEventRepository

ACCOUNTS = st.sampled_from(["a", "b", "c"])


@dataclass(frozen=True)
class Added(DomainEvent):
    amount: int
    by: str


@dataclass
class Counter(Aggregate[tuple[int, str], Added, None]):
    aggregate_type: ClassVar[str] = "Counter"
    event_classes: ClassVar[Sequence[type[object]]] = (Added,)
    total: int = 0

    async def handle(self, command: tuple[int, str], services: None) -> list[Added]:
        return [Added(command[0], command[1])]

    def apply(self, event: Added) -> None:
        self.total += event.amount


@dataclass
class Tally:
    total: int = 0
    events: list[str] = field(default_factory=list)


def update(view: Tally, envelope) -> None:
    view.total += envelope.payload.amount
    view.events.append(str(envelope.event_id))


def keys(envelope) -> list[str]:
    return [envelope.aggregate_id, f"by-{envelope.payload.by}", "all"]


class ProjectionMachine(RuleBasedStateMachine):
    backend: ClassVar[Any] = None  # a conftest Backend; None: a private in-memory repository
    examples = itertools.count()

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.checkpoints: CheckpointStore
        if self.backend is None:
            self.repository: PersistedEventRepository = MemoryEventRepository()
            self.run(self.repository.open())
            self.views: ViewRepository[Tally] = self.repository.view_repository(Tally, "tallies")
            self.checkpoints = MemoryCheckpoints()
        else:  # fresh tables for every example, in the backend's test database
            n = next(self.examples)
            self.repository = self.backend.new_repository(f"events{n}", f"snapshots{n}")
            self.run(self.repository.open())
            self.run(self.repository.create_schema())
            self.views = self.repository.view_repository(Tally, self.backend.name(f"tallies{n}"))
            self.checkpoints = self.repository.checkpoint_store(self.backend.name(f"cp{n}"))
            self.run(self.views.create_schema())
            self.run(self.checkpoints.create_schema())
        self.store = PersistedEventStore(self.repository, Counter)
        self.app = CqrsFramework(self.store)
        self.projection = ViewProjection(
            "tallies", [self.store], self.views, Tally, key=keys, update=update
        )
        self.generation = 0
        self.runner = self.new_runner(3)

    def run(self, coroutine):
        return self.loop.run_until_complete(coroutine)

    def teardown(self) -> None:
        self.run(self.repository.close())
        self.loop.close()

    def new_runner(self, batch_size: int) -> ProjectionRunner:
        self.generation += 1
        return ProjectionRunner(
            self.repository,
            self.checkpoints,
            [self.projection],
            owner=f"runner-{self.generation}",
            batch_size=batch_size,
            lease_ttl=0.001,  # a crashed runner's lease is free again at once
        )

    @rule(account=ACCOUNTS, amount=st.integers(1, 9), by=st.sampled_from(["x", "y"]))
    def commit(self, account: str, amount: int, by: str) -> None:
        self.run(self.app.execute(account, (amount, by)))

    @rule()
    def batch(self) -> None:
        self.run(self.runner.run_once())

    @rule(half=st.booleans())
    def crash_before_the_checkpoint(self, half: bool) -> None:
        """The runner applied a batch (or half of it) and died before saving the checkpoint."""

        async def crash() -> None:
            after = await self.checkpoints.position("tallies")
            rows = []
            async for row in self.store.stream_all_events(after):
                rows.append(row)
                if len(rows) == self.runner.batch_size:
                    break
            if half:
                rows = rows[: len(rows) // 2]
            if rows:
                await self.projection.handle(rows)

        self.run(crash())

    @rule(batch_size=st.integers(1, 5))
    def restart(self, batch_size: int) -> None:
        self.runner = self.new_runner(batch_size)

    @invariant()
    def checkpoint_never_passes_the_views(self) -> None:
        position = self.run(self.checkpoints.position("tallies"))
        view = self.run(self.views.load_with_context("all"))
        assert position == 0 or (view is not None and view[1].version >= position)

    def teardown_check(self) -> None:
        async def settle() -> None:
            while await self.runner.run_once():
                pass

        self.run(settle())
        expected: dict[str, Tally] = {}

        async def replay() -> None:
            async for envelope in self.store.stream_all_events():
                for key in keys(envelope):
                    update(expected.setdefault(key, Tally()), envelope)

        self.run(replay())
        for key, view in expected.items():
            assert self.run(self.views.load(key)) == view, key


class Checked(ProjectionMachine):
    def teardown(self) -> None:
        try:
            self.teardown_check()
        finally:
            super().teardown()


def run_machine(backend: Any, max_examples: int, steps: int) -> None:
    class OnBackend(Checked):
        pass

    OnBackend.backend = backend
    run_state_machine_as_test(
        OnBackend,
        settings=settings(
            max_examples=max_examples,
            stateful_step_count=steps,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


def test_views_equal_a_full_replay_whatever_happens():
    run_machine(None, max_examples=40, steps=25)


def test_views_equal_a_full_replay_with_each_backends_checkpoints(sync_backend):
    scale = getattr(sync_backend.factory, "stress_scale", 1.0)
    run_machine(sync_backend, max_examples=max(3, int(10 * scale)), steps=15)


@pytest.mark.stress
def test_views_equal_a_full_replay_with_each_backends_checkpoints_over_long_runs(sync_backend):
    scale = getattr(sync_backend.factory, "stress_scale", 1.0)
    run_machine(sync_backend, max_examples=max(10, int(60 * scale)), steps=30)
