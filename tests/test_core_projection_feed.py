"""How a ProjectionRunner reads on the in-memory backend: the stream it opens is closed when
a batch is done with it, a catch-up does not wait between batches, and the status dates the
events not yet applied by the first of them."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import UTC, datetime, timedelta

from cqrs import EventEnvelope, SerializedEvent
from cqrs.checkpoints import MemoryCheckpoints
from cqrs.projection import ProjectionRunner
from cqrs_memory import MemoryEventRepository

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


def stored(number: int) -> SerializedEvent:
    return SerializedEvent(
        "A",
        f"x{number}",
        1,
        "E",
        "1.0",
        b"{}",
        b"{}",
        EPOCH + timedelta(minutes=number),
        uuid.uuid4(),
    )


class Decoder:
    aggregate_type = "A"

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
    def __init__(self) -> None:
        self.name, self.sources, self.event_types = "p", [Decoder()], None
        self.batches: list[list[int]] = []

    async def handle(self, events) -> None:
        self.batches.append([e.position for e in events])


class Closing(MemoryEventRepository):
    """Counts the global-stream reads opened and closed and the events they gave."""

    def __init__(self) -> None:
        super().__init__()
        self.opened = self.closed = self.given = 0

    async def stream_all_events(self, aggregate_type, after_position=None):
        self.opened += 1
        try:
            async for item in super().stream_all_events(aggregate_type, after_position):
                self.given += 1
                yield item
        finally:
            self.closed += 1


async def filled(repository: MemoryEventRepository, count: int) -> None:
    await repository.open()
    for number in range(1, count + 1):
        await repository.persist([stored(number)], None)


async def test_run_once_reads_one_batch_and_closes_the_stream_it_left_unfinished():
    repository = Closing()
    await filled(repository, 5)
    projection = Recorder()
    made = ProjectionRunner(repository, MemoryCheckpoints(), [projection], batch_size=2)
    assert await made.run_once() == 2
    assert projection.batches == [[1, 2]]
    assert (repository.opened, repository.closed) == (1, 1)
    assert repository.given == 2  # nothing read ahead for a batch that will not come


async def test_the_status_dates_what_is_behind_by_the_first_event_not_applied():
    repository = MemoryEventRepository()
    await filled(repository, 5)
    made = ProjectionRunner(repository, MemoryCheckpoints(), [Recorder()], batch_size=2)
    await made.run_once()
    status = made.status()["p"]
    assert (status.head, status.checkpoint, status.caught_up) == (2, 2, False)
    assert status.behind_since == EPOCH + timedelta(minutes=1)
    assert status.lag_seconds > 0
    assert await made.run_once() == 2  # from 2 to 4
    assert made.status()["p"].behind_since == EPOCH + timedelta(minutes=3)


async def test_a_catch_up_in_small_batches_does_not_wait_between_them():
    repository = MemoryEventRepository()
    await filled(repository, 6)
    projection = Recorder()
    made = ProjectionRunner(
        repository, MemoryCheckpoints(), [projection], batch_size=1, poll_interval=0.02
    )
    task = asyncio.create_task(made.run())
    try:
        await made.wait_for(6, timeout=3)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert projection.batches == [[1], [2], [3], [4], [5], [6]]


class FailsToClose(MemoryEventRepository):
    """A global stream that raises when it is closed before its end."""

    async def stream_all_events(self, aggregate_type, after_position=None):
        try:
            async for item in super().stream_all_events(aggregate_type, after_position):
                yield item
        except GeneratorExit:
            raise RuntimeError("the cursor is gone") from None


async def test_a_stream_that_fails_to_close_does_not_fail_the_batch():
    repository = FailsToClose()
    await filled(repository, 5)
    projection = Recorder()
    made = ProjectionRunner(repository, MemoryCheckpoints(), [projection], batch_size=2)
    assert await made.run_once() == 2
    assert await made.checkpoints.position("p") == 2


class Stalls(MemoryEventRepository):
    """A global stream that stalls after its first ``given`` events until released."""

    def __init__(self, given: int) -> None:
        super().__init__()
        self.given = given
        self.release = asyncio.Event()

    async def stream_all_events(self, aggregate_type, after_position=None):
        count = 0
        async for item in super().stream_all_events(aggregate_type, after_position):
            if count == self.given:
                await self.release.wait()
            count += 1
            yield item


async def test_a_stop_during_a_read_ahead_abandons_the_read_and_returns():
    repository = Stalls(given=2)
    await filled(repository, 5)
    runners: list[ProjectionRunner] = []

    class StopsAfterOneBatch(Recorder):
        async def handle(self, events) -> None:
            await super().handle(events)
            runners[0].stop()  # the next batch's read is pending meanwhile

    projection = StopsAfterOneBatch()
    runners.append(
        ProjectionRunner(
            repository, MemoryCheckpoints(), [projection], batch_size=2, poll_interval=0.02
        )
    )
    await asyncio.wait_for(runners[0].run(), 5)
    assert projection.batches == [[1, 2]]
    assert runners[0].status()["p"].state == "stopped"
    assert await runners[0].checkpoints.position("p") == 2


async def test_a_batch_with_nothing_for_the_projection_moves_its_checkpoint_past_it():
    repository = MemoryEventRepository()
    await filled(repository, 5)
    projection = Recorder()
    projection.event_types = {"Other"}  # type: ignore[assignment]
    made = ProjectionRunner(repository, MemoryCheckpoints(), [projection], batch_size=2)
    assert await made.run_once() == 2
    assert projection.batches == []
    assert await made.checkpoints.position("p") == 2


class Logged(MemoryEventRepository):
    """Reads in the foreground (like SQLite's worker); logs each event its stream gives."""

    reads_in_background = False

    def __init__(self, log: list[tuple[str, int]]) -> None:
        super().__init__()
        self.log = log

    async def stream_all_events(self, aggregate_type, after_position=None):
        async for item in super().stream_all_events(aggregate_type, after_position):
            self.log.append(("read", item.position))
            yield item


async def test_reads_in_the_foreground_overlap_only_what_the_projection_awaits():
    log: list[tuple[str, int]] = []
    repository = Logged(log)
    await filled(repository, 6)

    class LoggedDecoder(Decoder):
        def decode(self, row: SerializedEvent) -> EventEnvelope[object]:
            log.append(("decoded", row.position))
            return super().decode(row)

    class Slow(Recorder):
        async def handle(self, events) -> None:
            await asyncio.sleep(0.01)  # its own write, say
            await super().handle(events)
            log.append(("handled", events[-1].position))

    projection = Slow()
    projection.sources = [LoggedDecoder()]
    made = ProjectionRunner(
        repository, MemoryCheckpoints(), [projection], batch_size=2, poll_interval=0.02
    )
    task = asyncio.create_task(made.run())
    try:
        await made.wait_for(6, timeout=5)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert projection.batches == [[1, 2], [3, 4], [5, 6]]
    # the next batch is read once this one is decoded, while it is handed over
    assert log.index(("decoded", 2)) < log.index(("read", 3)) < log.index(("handled", 2))
    assert log.index(("decoded", 4)) < log.index(("read", 5)) < log.index(("handled", 4))
