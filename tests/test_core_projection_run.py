"""ProjectionRunner.run and the retries of a batch on the in-memory backend: the log lines of a
runner that takes a lease, loses its database or its checkpoints, is fenced off or stops on a
failing event; how long it pauses between tries; standby and takeover; read-your-writes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TypeVar

import pytest

import cqrs.projection
from cqrs import DatabaseConnectionError, EventEnvelope, SerializedEvent
from cqrs.checkpoints import MemoryCheckpoints
from cqrs.projection import ProjectionFailedError, ProjectionRunner
from cqrs_memory import MemoryEventRepository


def stored(aggregate_id: str, aggregate_type: str = "A") -> SerializedEvent:
    return SerializedEvent(
        aggregate_type,
        aggregate_id,
        1,
        "E",
        "1.0",
        b"{}",
        b"{}",
        datetime.now(UTC),
        uuid.uuid4(),
    )


class Decoder:
    """Decodes the rows of one aggregate type into envelopes carrying the raw payload."""

    def __init__(self, aggregate_type: str = "A") -> None:
        self.aggregate_type = aggregate_type

    def decode(self, row: SerializedEvent) -> EventEnvelope[object]:
        return EventEnvelope(
            row.aggregate_type,
            row.aggregate_id,
            row.sequence,
            row.payload,
            {},
            row.timestamp,
            uuid.UUID(str(row.event_id)),
            row.position,
        )


class Recorder:
    """A projection that records the positions of each batch; ``failures`` lists errors its
    next calls raise, one per call."""

    def __init__(self, name: str = "p", failures: Sequence[Exception] = ()) -> None:
        self.name, self.sources, self.event_types = name, [Decoder()], None
        self.batches: list[list[int]] = []
        self.failures = list(failures)

    async def handle(self, events) -> None:
        if self.failures:
            raise self.failures.pop(0)
        self.batches.append([e.position for e in events])


class Paused(ProjectionRunner):
    """A runner that records how long each pause would last and pauses at most 5 ms."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.pauses: list[float] = []

    async def _pause(self, seconds: float) -> None:
        self.pauses.append(seconds)
        await super()._pause(min(seconds, 0.005))


class Flaky(MemoryEventRepository):
    """Records each read of the global stream; the first read stops with a lost server after
    ``cut`` rows, and the ``refusals`` reads after it fail at once."""

    def __init__(self, cut: int | None = None, refusals: int = 0) -> None:
        super().__init__()
        self.reads: list[tuple[str | None, int | None]] = []
        self.cut, self.refusals = cut, refusals

    async def stream_all_events(self, aggregate_type, after_position=None):
        self.reads.append((aggregate_type, after_position))
        if len(self.reads) > 1 and self.refusals:
            self.refusals -= 1
            raise DatabaseConnectionError("server gone")
        given = 0
        async for item in super().stream_all_events(aggregate_type, after_position):
            if len(self.reads) == 1 and given == self.cut:
                raise DatabaseConnectionError("server gone")
            given += 1
            yield item


class Checkpoints(MemoryCheckpoints):
    """The reference checkpoint store; ``unreachable`` acquires fail like a lost server, each
    renew is timed, ``refuse_renewal`` makes the next renew say the lease was taken, and
    while ``held`` is set, acquires wait for it to be released."""

    def __init__(self, unreachable: int = 0) -> None:
        super().__init__()
        self.unreachable = unreachable
        self.renewals: list[float] = []
        self.refuse_renewal = False
        self.held: asyncio.Event | None = None

    async def acquire(self, name, owner, ttl):
        if self.held is not None:
            await self.held.wait()
        if self.unreachable:
            self.unreachable -= 1
            raise DatabaseConnectionError("checkpoints gone")
        return await super().acquire(name, owner, ttl)

    async def renew(self, lease, ttl):
        self.renewals.append(time.monotonic())
        if self.refuse_renewal:
            self.refuse_renewal = False
            return False
        return await super().renew(lease, ttl)


R = TypeVar("R", bound=MemoryEventRepository)


async def filled(repository: R, count: int = 5) -> R:
    await repository.open()
    for number in range(1, count + 1):
        await repository.persist([stored(f"x{number}")], None)
    return repository


@contextlib.asynccontextmanager
async def running(runner: ProjectionRunner, *, cancel: bool = False):
    """Run ``runner`` in a task; on the way out stop it (or cancel it: a stop waits for the
    wake-up a caught-up projection waits on, up to ``poll_interval``)."""
    task = asyncio.create_task(runner.run())
    try:
        yield task
    finally:
        if cancel:
            task.cancel()
        runner.stop()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(task, 5)


async def until(condition, seconds: float = 5.0) -> None:
    async with asyncio.timeout(seconds):
        while not condition():  # noqa: ASYNC110 - polls a status
            await asyncio.sleep(0.002)


def messages(caplog, level: int | None = None) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "cqrs.projections" and (level is None or r.levelno == level)
    ]


# -- run: a lost database, lost checkpoints ----------------------------------------------------


async def test_a_runner_says_where_it_runs_and_rides_out_a_lost_database(caplog):
    repository = await filled(Flaky(cut=3, refusals=2))
    projection = Recorder()
    made = Paused(
        repository,
        Checkpoints(unreachable=1),
        [projection],
        owner="me",
        batch_size=2,
        lease_ttl=3,
        poll_interval=0.02,
        retry_delay=0.05,
    )
    with caplog.at_level(logging.INFO, logger="cqrs.projections"):
        async with running(made):
            await made.wait_for(5, timeout=5)
    # every event once, in order: the reads after the loss resume after the last batch
    assert projection.batches == [[1, 2], [3, 4], [5]]
    assert repository.reads == [("A", 0), ("A", 2), ("A", 2), ("A", 2)]
    # the checkpoints' pause is a third of the lease; the database's doubles from 2 x 0.05
    assert made.pauses == [1.0, 0.1, 0.2, 0.4]
    assert messages(caplog) == [
        "projection 'p' cannot reach its checkpoints: checkpoints gone",
        "projection 'p' runs here (me, token 1) from position 0",
        "projection 'p' lost its database: server gone",
        "projection 'p' lost its database: server gone",
        "projection 'p' lost its database: server gone",
        "projection 'p' reached its database again",
    ]
    levels = [r.levelno for r in caplog.records if r.name == "cqrs.projections"]
    assert levels == [logging.WARNING, logging.INFO] + [logging.WARNING] * 3 + [logging.INFO]
    assert made.status()["p"].state == "stopped"
    assert made.status()["p"].checkpoint == 5


async def test_a_database_lost_for_long_is_retried_at_most_every_five_seconds():
    repository = await filled(Flaky(cut=0, refusals=3))
    made = Paused(repository, MemoryCheckpoints(), [Recorder()], poll_interval=0.02, retry_delay=1)
    async with running(made):
        await made.wait_for(5, timeout=5)
    assert made.pauses == [2.0, 4.0, 5.0, 5.0]


async def test_a_runner_keeps_its_lease_renewed_every_third_of_its_ttl():
    repository = await filled(MemoryEventRepository())
    checkpoints = Checkpoints()
    made = ProjectionRunner(
        repository, checkpoints, [Recorder()], owner="me", lease_ttl=0.3, poll_interval=0.02
    )
    async with running(made):
        await made.wait_for(5, timeout=5)
        await asyncio.sleep(0.7)
        # renewed all along: nobody else can take the projection over
        assert await checkpoints.acquire("p", "other", 10) is None
    gaps = [b - a for a, b in zip(checkpoints.renewals, checkpoints.renewals[1:], strict=False)]
    assert len(checkpoints.renewals) >= 3
    assert min(gaps) > 0.1


async def test_a_runner_whose_renewal_is_refused_says_so_and_takes_the_lease_again(caplog):
    repository = await filled(MemoryEventRepository())
    checkpoints = Checkpoints()
    projection = Recorder()
    made = ProjectionRunner(
        repository, checkpoints, [projection], owner="me", lease_ttl=0.15, poll_interval=0.02
    )
    with caplog.at_level(logging.INFO, logger="cqrs.projections"):
        async with running(made):
            await made.wait_for(5, timeout=5)
            held = checkpoints.held = asyncio.Event()
            checkpoints.refuse_renewal = True
            await until(lambda: len(messages(caplog)) >= 2)
            assert made.status()["p"].state == "standby"  # until it has the lease again
            checkpoints.held = None
            held.set()
            await until(lambda: len(messages(caplog)) >= 3)
            await repository.persist([stored("x6")], None)
            await made.wait_for(6, timeout=5)
            await asyncio.sleep(0.2)  # renewed again meanwhile: nothing more to say
    assert messages(caplog)[:3] == [
        "projection 'p' runs here (me, token 1) from position 0",
        "projection 'p': the lease of 'me' (token 1) was taken over",
        "projection 'p' runs here (me, token 2) from position 5",
    ]
    assert messages(caplog, logging.WARNING) == [
        "projection 'p': the lease of 'me' (token 1) was taken over"
    ]
    assert projection.batches == [[1, 2, 3, 4, 5], [6]]
    status = made.status()["p"]
    assert (status.token, status.checkpoint, status.saved) == (2, 6, 6)


# -- run: standby ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lease_ttl", "poll_interval"),
    [(3.0, 0.02), (0.3, 1.0)],
    ids=["five-polls", "third-of-the-lease"],
)
async def test_a_runner_in_standby_retries_within_five_polls_and_a_third_of_its_lease(
    lease_ttl, poll_interval
):
    repository = await filled(MemoryEventRepository())
    checkpoints = MemoryCheckpoints()
    other = await checkpoints.acquire("p", "other", 0.1)
    assert other is not None
    projection = Recorder()
    made = Paused(
        repository,
        checkpoints,
        [projection],
        owner="me",
        lease_ttl=lease_ttl,
        poll_interval=poll_interval,
    )
    async with running(made, cancel=True):
        await until(lambda: made.status()["p"].state == "standby")
        await made.wait_for(5, timeout=5)  # taken over once the other lease ran out
        assert made.status()["p"].state == "running"
    assert made.pauses
    assert made.pauses == pytest.approx([0.1] * len(made.pauses))
    assert projection.batches == [[1, 2, 3, 4, 5]]


async def test_wait_for_counts_the_stored_checkpoint_of_a_projection_run_elsewhere():
    repository = await filled(MemoryEventRepository())
    checkpoints = MemoryCheckpoints()
    other = await checkpoints.acquire("p", "other", 30)
    assert other is not None
    made = ProjectionRunner(repository, checkpoints, [Recorder()], owner="me", poll_interval=0.02)
    async with running(made):
        await until(lambda: made.status()["p"].state == "standby")
        with pytest.raises(TimeoutError):
            await made.wait_for(3, timeout=0.1)
        await checkpoints.save(other, 3)
        await made.wait_for(3, timeout=5)  # exactly the position asked for
        with pytest.raises(TimeoutError):
            await made.wait_for(4, timeout=0.1)
        assert made.status()["p"].state == "standby"


# -- run: a projection that fails --------------------------------------------------------------


async def test_a_failed_projection_is_logged_releases_its_lease_and_fails_wait_for(caplog):
    repository = await filled(MemoryEventRepository())
    checkpoints = MemoryCheckpoints()
    failing = Recorder("failing", [ValueError("bad")])
    healthy = Recorder("healthy")
    made = ProjectionRunner(
        repository,
        checkpoints,
        [failing, healthy],
        owner="me",
        attempts=1,
        poll_interval=0.02,
        retry_delay=0,
        batch_size=1,
    )
    with caplog.at_level(logging.ERROR, logger="cqrs.projections"):
        async with running(made):
            await until(lambda: made.status()["failing"].state == "failed")
            with pytest.raises(RuntimeError) as raised:
                await made.wait_for(5, timeout=5)
            # released at once: another runner takes the failed projection over
            assert await checkpoints.acquire("failing", "other", 10) is not None
            assert made.status()["healthy"].state == "running"
    error = made.status()["failing"].error
    assert error is not None
    assert error.startswith("projection 'failing' stopped at position 1 (A 'x1' sequence 1,")
    assert str(raised.value) == f"projection 'failing' failed: {error}"
    records = [r for r in caplog.records if r.name == "cqrs.projections"]
    assert [(r.levelno, r.getMessage()) for r in records] == [(logging.ERROR, error)]
    assert made.status()["failing"].state == "failed"  # a stop leaves it failed
    assert made.status()["healthy"].state == "stopped"


async def test_a_stopped_runner_saves_and_releases_and_reports_stopped():
    repository = await filled(MemoryEventRepository())
    checkpoints = Saves()
    made = ProjectionRunner(repository, checkpoints, [Recorder()], owner="me", poll_interval=0.02)
    async with running(made) as task:
        await made.wait_for(5, timeout=5)
        made.stop()
        await asyncio.wait_for(task, 5)
    assert made.status()["p"].state == "stopped"
    assert checkpoints.saves == [5]  # saved when the read reached the end, not again
    assert await checkpoints.acquire("p", "other", 10) is not None


async def test_a_cancelled_runner_releases_its_leases():
    repository = await filled(MemoryEventRepository())
    checkpoints = MemoryCheckpoints()
    made = ProjectionRunner(repository, checkpoints, [Recorder()], owner="me", poll_interval=0.02)
    task = asyncio.create_task(made.run())
    await made.wait_for(5, timeout=5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await checkpoints.acquire("p", "other", 10) is not None


class Unpushed:
    """A repository that cannot push wake-ups (no ``wake_ups``): the runner polls it."""

    def __init__(self, inner: MemoryEventRepository) -> None:
        self.inner = inner

    def stream_all_events(self, aggregate_type, after_position=None):
        return self.inner.stream_all_events(aggregate_type, after_position)


async def test_a_runner_polls_a_repository_that_cannot_push():
    inner = await filled(MemoryEventRepository())
    projection = Recorder()
    made = ProjectionRunner(
        Unpushed(inner),  # type: ignore[arg-type]
        MemoryCheckpoints(),
        [projection],
        poll_interval=0.02,
    )
    async with running(made):
        await made.wait_for(5, timeout=5)
        await inner.persist([stored("x6")], None)
        await made.wait_for(6, timeout=5)
    assert projection.batches == [[1, 2, 3, 4, 5], [6]]


async def test_a_commit_is_pushed_to_a_runner_long_before_its_poll_interval():
    repository = await filled(MemoryEventRepository())
    projection = Recorder()
    made = ProjectionRunner(repository, MemoryCheckpoints(), [projection], poll_interval=30)
    async with running(made, cancel=True):
        await made.wait_for(5, timeout=5)
        await asyncio.sleep(0.05)  # waiting for a wake-up now
        await repository.persist([stored("x6")], None)
        await made.wait_for(6, timeout=2)
        await made.wait_for(6, timeout=1)  # applied already: no read to wait for
    assert projection.batches == [[1, 2, 3, 4, 5], [6]]


# -- retries of one batch ----------------------------------------------------------------------


class UpperBound:
    """Stands in for ``random``: ``uniform`` records its bounds and returns the upper one."""

    def __init__(self) -> None:
        self.bounds: list[tuple[float, float]] = []

    def uniform(self, low: float, high: float) -> float:
        self.bounds.append((low, high))
        return high


async def test_a_lost_database_in_a_batch_is_retried_with_a_doubling_pause_up_to_1024_times(
    caplog,
):
    repository = await filled(MemoryEventRepository(), 2)
    gone = [DatabaseConnectionError(f"view database gone {n}") for n in range(12)]
    projection = Recorder(failures=gone)
    made = Paused(repository, MemoryCheckpoints(), [projection], attempts=1, retry_delay=0.001)
    with caplog.at_level(logging.WARNING, logger="cqrs.projections"):
        assert await made.run_once() == 2
    assert projection.batches == [[1, 2]]
    assert made.pauses == [0.001 * 2 ** min(n, 10) for n in range(12)]
    assert messages(caplog)[:2] == [
        "projection 'p' lost its database: view database gone 0",
        "projection 'p' lost its database: view database gone 1",
    ]
    assert len(messages(caplog)) == 12


async def test_a_batch_lost_database_pause_stops_at_five_seconds():
    repository = await filled(MemoryEventRepository(), 1)
    gone = [DatabaseConnectionError("gone")] * 4
    projection = Recorder(failures=gone)
    made = Paused(repository, MemoryCheckpoints(), [projection], retry_delay=2)
    assert await made.run_once() == 1
    assert made.pauses == [2.0, 4.0, 5.0, 5.0]


async def test_a_failing_batch_waits_a_random_time_up_to_a_doubling_bound(monkeypatch, caplog):
    jitter = UpperBound()
    monkeypatch.setattr(cqrs.projection, "random", jitter)
    repository = await filled(MemoryEventRepository(), 2)
    errors = [ValueError("first"), ValueError("second"), ValueError("third")]
    projection = Recorder(failures=errors)
    made = Paused(repository, MemoryCheckpoints(), [projection], attempts=4, retry_delay=0.5)
    with caplog.at_level(logging.WARNING, logger="cqrs.projections"):
        assert await made.run_once() == 2
    assert projection.batches == [[1, 2]]
    assert jitter.bounds == [(0, 1.0), (0, 2.0), (0, 4.0)]
    assert made.pauses == [1.0, 2.0, 4.0]
    tried = "projection 'p' failed on 2 event(s) from position 1 (try {} of 4): {!r}"
    assert messages(caplog) == [tried.format(n + 1, error) for n, error in enumerate(errors)]


async def test_the_last_try_is_not_followed_by_a_pause(monkeypatch):
    monkeypatch.setattr(cqrs.projection, "random", UpperBound())
    repository = await filled(MemoryEventRepository(), 1)
    projection = Recorder(failures=[ValueError("a"), ValueError("b")])
    made = Paused(repository, MemoryCheckpoints(), [projection], attempts=2, retry_delay=0.5)
    with pytest.raises(ProjectionFailedError):
        await made.run_once()
    assert made.pauses == [1.0]


# -- the failure policy, event by event --------------------------------------------------------


class Poisoned:
    """A projection that fails on chosen positions and records what took effect."""

    def __init__(self, poison: set[int]) -> None:
        self.name, self.sources, self.event_types = "p", [Decoder()], None
        self.poison = poison
        self.batches: list[list[int]] = []

    async def handle(self, events) -> None:
        positions = [e.position for e in events]
        if self.poison & set(positions):
            raise ValueError(f"bad {sorted(self.poison & set(positions))}")
        self.batches.append(positions)


class Saves(MemoryCheckpoints):
    """The reference checkpoint store, recording each checkpoint write."""

    def __init__(self) -> None:
        super().__init__()
        self.saves: list[int] = []

    async def save(self, lease, position: int) -> None:
        self.saves.append(position)
        await super().save(lease, position)


async def test_a_one_event_batch_that_fails_is_not_tried_again_alone(caplog):
    repository = await filled(MemoryEventRepository(), 3)
    checkpoints = Saves()
    made = ProjectionRunner(
        repository, checkpoints, [Poisoned({1})], batch_size=1, attempts=2, retry_delay=0
    )
    with (
        caplog.at_level(logging.WARNING, logger="cqrs.projections"),
        pytest.raises(ProjectionFailedError) as raised,
    ):
        await made.run_once()
    assert raised.value.position == 1
    tried = (
        "projection 'p' failed on 1 event(s) from position 1 (try {} of 2): ValueError('bad [1]')"
    )
    assert messages(caplog) == [tried.format(1), tried.format(2)]
    assert checkpoints.saves == []  # nothing applied: nothing to save
    assert made.status()["p"].checkpoint == 0


async def test_every_event_that_keeps_failing_is_parked_and_the_batch_is_saved(caplog):
    repository = await filled(MemoryEventRepository(), 5)
    projection = Poisoned({2, 4})
    checkpoints = Saves()
    made = ProjectionRunner(
        repository, checkpoints, [projection], attempts=1, retry_delay=0, on_failure="park"
    )
    with caplog.at_level(logging.ERROR, logger="cqrs.projections"):
        assert await made.run_once() == 5
    assert projection.batches == [[1], [3], [5]]
    assert [p.position for p in await checkpoints.parked("p")] == [2, 4]
    assert made.status()["p"].parked == 2
    assert checkpoints.saves == [5]
    assert await checkpoints.position("p") == 5
    assert messages(caplog, logging.ERROR) == [
        "projection 'p' parked the event at position 2: ValueError('bad [2]')",
        "projection 'p' parked the event at position 4: ValueError('bad [4]')",
    ]
