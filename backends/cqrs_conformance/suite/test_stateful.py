"""A Hypothesis state machine drives a repository and a plain model side by side: commit,
conflicting commit, load, snapshot, stream and replay must always agree."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule, run_state_machine_as_test

from cqrs import AggregateConflict, PersistedEventRepository, SerializedSnapshot, default_codec
from cqrs_conformance.support import batch, collect

IDS = st.sampled_from(["a", "b", "c"])


class RepositoryMachine(RuleBasedStateMachine):
    loop: asyncio.AbstractEventLoop
    repository: PersistedEventRepository

    def __init__(self) -> None:
        super().__init__()
        self.type = f"T{uuid.uuid4().hex[:8]}"  # a fresh stream for every example
        self.events: dict[str, list[int]] = {}  # aggregate -> payload "n" by sequence
        self.snapshots: dict[str, int] = {}
        self.stream: list[tuple[str, int]] = []  # (aggregate, sequence) in commit order
        self.positions: list[int] = []

    def run(self, coroutine):
        return self.loop.run_until_complete(coroutine)

    @rule(aggregate=IDS, size=st.integers(1, 4), snapshot=st.booleans())
    def commit(self, aggregate: str, size: int, snapshot: bool) -> None:
        first = len(self.events.get(aggregate, [])) + 1
        rows = batch(aggregate, first, size, aggregate_type=self.type)
        last = first + size - 1
        state = SerializedSnapshot(self.type, aggregate, b'{"at": %d}' % last, last, 1)
        positions = self.run(self.repository.persist(rows, state if snapshot else None))
        assert len(positions) == size
        assert not self.positions or positions[0] > self.positions[-1]
        self.positions.extend(positions)
        self.events.setdefault(aggregate, []).extend(range(first, last + 1))
        self.stream.extend((aggregate, s) for s in range(first, last + 1))
        if snapshot:
            self.snapshots[aggregate] = last

    @precondition(lambda self: self.events)
    @rule(data=st.data(), size=st.integers(1, 3))
    def conflicting_commit(self, data: st.DataObject, size: int) -> None:
        aggregate = data.draw(st.sampled_from(sorted(self.events)))
        first = data.draw(st.integers(1, len(self.events[aggregate])))
        rows = batch(aggregate, first, size, aggregate_type=self.type)
        with pytest.raises(AggregateConflict):
            self.run(self.repository.persist(rows, None))

    @rule(aggregate=IDS, after=st.integers(0, 6))
    def load(self, aggregate: str, after: int) -> None:
        stored = self.run(self.repository.get_last_events(self.type, aggregate, after))
        expected = [s for s in self.events.get(aggregate, []) if s > after]
        assert [e.sequence for e in stored] == expected
        assert [default_codec.decode_untyped(e.payload) for e in stored] == [
            {"n": s} for s in expected
        ]
        streamed = self.run(collect(self.repository.stream_events(self.type, aggregate)))
        assert [e.sequence for e in streamed] == self.events.get(aggregate, [])

    @rule(aggregate=IDS)
    def snapshot(self, aggregate: str) -> None:
        stored = self.run(self.repository.get_snapshot(self.type, aggregate))
        if aggregate not in self.snapshots:
            assert stored is None
        else:
            assert stored is not None
            assert stored.last_sequence == self.snapshots[aggregate]

    @rule(data=st.data())
    def replay_from_checkpoint(self, data: st.DataObject) -> None:
        index = data.draw(st.integers(0, len(self.positions)))
        after = self.positions[index - 1] if index else None
        streamed = self.run(collect(self.repository.stream_all_events(self.type, after)))
        assert [(e.aggregate_id, e.sequence) for e in streamed] == self.stream[index:]
        assert [e.position for e in streamed] == self.positions[index:]


def run_machine(backend, max_examples: int, steps: int) -> None:
    loop = asyncio.new_event_loop()
    repository = backend.new_repository()
    try:
        loop.run_until_complete(repository.open())
        loop.run_until_complete(repository.create_schema())
        RepositoryMachine.loop = loop
        RepositoryMachine.repository = repository
        run_state_machine_as_test(
            RepositoryMachine,
            settings=settings(
                max_examples=max_examples,
                stateful_step_count=steps,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )
    finally:
        loop.run_until_complete(repository.close())
        loop.close()


def test_repository_agrees_with_a_model(sync_backend):
    run_machine(sync_backend, max_examples=8, steps=12)


@pytest.mark.stress
def test_repository_agrees_with_a_model_over_long_runs(sync_backend):
    scale = getattr(sync_backend.factory, "stress_scale", 1.0)
    run_machine(sync_backend, max_examples=max(10, int(60 * scale)), steps=30)
