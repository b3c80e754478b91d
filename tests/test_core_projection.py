"""ProjectionRunner and ViewProjection through their public surface on the in-memory backend:
settings and their errors, defaults, what one batch reads, hands over and checkpoints, the
status a runner reports, its log lines, and the errors that name a failing event."""

from __future__ import annotations

import logging
import os
import re
import socket
import uuid
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from cqrs import ConfigurationError, EventEnvelope, SerializedEvent
from cqrs.checkpoints import MemoryCheckpoints
from cqrs.projection import (
    ProjectionFailedError,
    ProjectionRunner,
    ProjectionStatus,
    ViewProjection,
    partition_of,
    partitions,
)
from cqrs.rebuild import SwitchableViews
from cqrs.repository import ViewContext
from cqrs_memory import MemoryEventRepository


@dataclass
class Seen:
    positions: list[int]


class Recorder:
    """A projection that records what it is handed and can fail on chosen positions."""

    def __init__(self, name, sources, event_types=None, fail_on=()):
        self.name, self.sources, self.event_types = name, sources, event_types
        self.batches: list[list[int]] = []
        self.fail_on = set(fail_on)

    async def handle(self, events):
        positions = [e.position for e in events]
        if self.fail_on & set(positions):
            raise ValueError(f"bad {sorted(self.fail_on & set(positions))}")
        self.batches.append(positions)


def stored(aggregate_type: str, aggregate_id: str, sequence: int = 1, event_type: str = "E"):
    return SerializedEvent(
        aggregate_type,
        aggregate_id,
        sequence,
        event_type,
        "1.0",
        b"{}",
        b"{}",
        datetime.now(UTC),
        uuid.uuid4(),
    )


class Decoder:
    """Decodes the rows of one aggregate type into envelopes carrying the raw payload."""

    def __init__(self, aggregate_type: str) -> None:
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


@pytest.fixture
async def repository():
    async with MemoryEventRepository() as repository:
        for number, aggregate_type in enumerate(["A", "B", "A", "C", "A"], start=1):
            await repository.persist([stored(aggregate_type, f"x{number}")], None)
        yield repository


def runner(repository, projections, **options):
    options = {"poll_interval": 0.02, "retry_delay": 0, **options}
    return ProjectionRunner(repository, MemoryCheckpoints(), projections, **options)


# -- settings ----------------------------------------------------------------------------------


def test_the_defaults(repository):
    projection = Recorder("p", [Decoder("A")])
    made = ProjectionRunner(repository, MemoryCheckpoints(), [projection])
    assert (made.batch_size, made.lease_ttl, made.poll_interval) == (100, 10.0, 1.0)
    assert (made.attempts, made.retry_delay, made.on_failure) == (5, 0.05, "stop")
    assert made.save_interval == 1.0
    host, pid, suffix = made.owner.rsplit(":", 2)
    assert (host, pid) == (socket.gethostname(), str(os.getpid()))
    assert re.fullmatch("[0-9a-f]{8}", suffix)
    other = ProjectionRunner(repository, MemoryCheckpoints(), [projection])
    assert other.owner != made.owner
    status = made.status()["p"]
    assert (status.name, status.state, status.owner) == ("p", "starting", made.owner)
    assert made.status() is not made.status()  # a copy of the mapping


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"batch_size": 0}, "batch_size must be a positive int, not 0"),
        ({"batch_size": 2.0}, "batch_size must be a positive int, not 2.0"),
        (
            {"lease_ttl": 0},
            "lease_ttl and poll_interval must be > 0, retry_delay >= 0, attempts >= 1",
        ),
        (
            {"poll_interval": 0},
            "lease_ttl and poll_interval must be > 0, retry_delay >= 0, attempts >= 1",
        ),
        (
            {"retry_delay": -0.1},
            "lease_ttl and poll_interval must be > 0, retry_delay >= 0, attempts >= 1",
        ),
        (
            {"attempts": 0},
            "lease_ttl and poll_interval must be > 0, retry_delay >= 0, attempts >= 1",
        ),
        ({"save_interval": -1}, "save_interval must be a number of seconds >= 0, not -1"),
        ({"save_interval": "1"}, "save_interval must be a number of seconds >= 0, not '1'"),
        ({"on_failure": "skip"}, "on_failure must be 'stop' or 'park', not 'skip'"),
    ],
)
def test_bad_settings_are_refused_by_name(repository, options, message):
    projection = Recorder("p", [Decoder("A")])
    with pytest.raises(ConfigurationError) as raised:
        ProjectionRunner(repository, MemoryCheckpoints(), [projection], **options)
    assert str(raised.value) == message


def test_limits_are_accepted_and_kept_as_given(repository):
    projection = Recorder("p", [Decoder("A")])
    made = ProjectionRunner(
        repository,
        MemoryCheckpoints(),
        [projection],
        owner="me",
        batch_size=1,
        lease_ttl=3,
        poll_interval=2,
        attempts=1,
        retry_delay=0,
        on_failure="park",
        save_interval=0,
    )
    assert (made.owner, made.batch_size, made.lease_ttl, made.poll_interval) == ("me", 1, 3.0, 2.0)
    assert (made.attempts, made.retry_delay, made.on_failure, made.save_interval) == (
        1,
        0.0,
        "park",
        0.0,
    )


def test_projections_are_named_once_each_and_read_something(repository):
    sources = [Decoder("A")]
    with pytest.raises(ConfigurationError) as raised:
        runner(repository, [Recorder("b", sources), Recorder("a", sources), Recorder("b", sources)])
    assert str(raised.value) == "projection names must be unique: ['a', 'b', 'b']"
    with pytest.raises(ConfigurationError) as raised:
        runner(repository, [Recorder("p", [])])
    assert str(raised.value) == "projection 'p' reads no aggregate type (no sources)"
    with pytest.raises(ValueError, match=r"^owner must be"):
        runner(repository, [Recorder("p", sources)], owner="\x00")


# -- one batch ---------------------------------------------------------------------------------


async def test_run_once_hands_over_one_batch_of_the_projections_types_and_saves_it(repository):
    only_a = Recorder("only_a", [Decoder("A")])
    a_and_c = Recorder("a_and_c", [Decoder("A"), Decoder("C")])
    made = runner(repository, [only_a, a_and_c], batch_size=2)
    assert await made.run_once() == 3 + 2  # A at 1 and 3; all types at 1 and 2
    assert only_a.batches == [[1, 3]]
    assert a_and_c.batches == [[1]]
    statuses = made.status()
    assert (statuses["only_a"].checkpoint, statuses["only_a"].saved) == (3, 3)
    assert (statuses["only_a"].head, statuses["only_a"].batches) == (3, 1)
    assert statuses["only_a"].token == 1
    assert not statuses["only_a"].caught_up
    assert await made.checkpoints.position("only_a") == 3
    assert await made.checkpoints.position("a_and_c") == 2


async def test_a_caught_up_read_is_reported_and_moves_nothing(repository):
    only_c = Recorder("only_c", [Decoder("C")])
    made = runner(repository, [only_c])
    assert await made.run_once() == 4  # C at 4, the end of the stream
    assert made.status()["only_c"].caught_up
    assert made.status()["only_c"].behind_since is None
    assert await made.run_once() == 0
    assert only_c.batches == [[4]]


async def test_event_types_select_what_is_handed_over_and_the_checkpoint_moves_past_the_rest():
    async with MemoryEventRepository() as repository:
        for sequence, event_type in enumerate(["Opened", "Deposited", "Closed"], start=1):
            await repository.persist([stored("A", "a", sequence, event_type)], None)
        picky = Recorder("picky", [Decoder("A")], event_types={"Deposited"})
        made = runner(repository, [picky])
        assert await made.run_once() == 3
        assert picky.batches == [[2]]
        assert made.status()["picky"].checkpoint == 3


async def test_a_batch_that_keeps_failing_stops_the_projection_right_before_it(repository, caplog):
    failing = Recorder("failing", [Decoder("A")], fail_on={3})
    made = runner(repository, [failing], attempts=2)
    with (
        caplog.at_level(logging.WARNING, logger="cqrs.projections"),
        pytest.raises(ProjectionFailedError) as raised,
    ):
        await made.run_once()
    error = raised.value
    assert (error.name, error.position) == ("failing", 3)
    assert str(error).startswith("projection 'failing' stopped at position 3 (A 'x3' sequence 1,")
    assert str(error).endswith("): ValueError('bad [3]')")
    assert isinstance(error.__cause__, ValueError)
    assert failing.batches == [[1]]  # the event before the failing one took effect
    assert await made.checkpoints.position("failing") == 1
    status = made.status()["failing"]
    assert (status.state, status.error) == ("failed", str(error))
    messages = [r.getMessage() for r in caplog.records if r.name == "cqrs.projections"]
    tries = "projection 'failing' failed on 3 event(s) from position 1 (try {} of 2): {!r}"
    assert messages[:2] == [
        tries.format(1, ValueError("bad [3]")),
        tries.format(2, ValueError("bad [3]")),
    ]


async def test_park_sets_each_failing_event_aside_with_its_error(repository, caplog):
    failing = Recorder("failing", [Decoder("A")], fail_on={3})
    made = runner(repository, [failing], attempts=1, on_failure="park")
    with caplog.at_level(logging.ERROR, logger="cqrs.projections"):
        assert await made.run_once() == 5
    assert failing.batches == [[1], [5]]
    parked = await made.checkpoints.parked("failing")
    assert [(p.position, p.error) for p in parked] == [(3, "ValueError('bad [3]')")]
    assert made.status()["failing"].parked == 1
    messages = [r.getMessage() for r in caplog.records if r.name == "cqrs.projections"]
    assert messages == [
        "projection 'failing' parked the event at position 3: ValueError('bad [3]')"
    ]


def test_failed_error_names_the_event_and_keeps_its_id():
    row = SerializedEvent(
        "A", "acc-1", 4, "E", "1.0", b"{}", b"{}", datetime.now(UTC), uuid.uuid4(), 17
    )
    error = ProjectionFailedError("totals", row, KeyError("x"))
    assert str(error) == (
        f"projection 'totals' stopped at position 17 (A 'acc-1' sequence 4, "
        f"event id {row.event_id}): KeyError('x')"
    )
    assert (error.name, error.position, error.event_id) == ("totals", 17, str(row.event_id))


def test_status_lag():
    status = ProjectionStatus("p")
    assert (status.state, status.checkpoint, status.head, status.lag_events) == (
        "starting",
        0,
        0,
        0,
    )
    assert status.lag_seconds == 0.0
    status.head, status.checkpoint = 10, 4
    assert status.lag_events == 6
    status.checkpoint = 12
    assert status.lag_events == 0
    status.behind_since = datetime.now(UTC) - timedelta(seconds=30)
    assert 29 < status.lag_seconds < 60
    status.behind_since = datetime.now(UTC) + timedelta(seconds=30)
    assert status.lag_seconds == 0.0


# -- ViewProjection ----------------------------------------------------------------------------


def view_projection(repository, name="totals", **options):
    return ViewProjection(
        name,
        [Decoder("A")],
        repository.view_repository(Seen, "seen"),
        lambda: Seen([]),
        key=lambda envelope: envelope.aggregate_id,
        update=lambda view, envelope: view.positions.append(envelope.position),
        **options,
    )


@pytest.mark.parametrize("attempts", [0, -1, 1.5, None])
def test_a_view_projection_needs_a_whole_number_of_attempts(repository, attempts):
    with pytest.raises(ConfigurationError) as raised:
        view_projection(repository, attempts=attempts)
    assert str(raised.value) == f"ViewProjection attempts must be at least 1, not {attempts!r}"


def test_a_view_projection_shows_what_it_was_given(repository):
    assert view_projection(repository).attempts == 20
    projection = view_projection(repository, event_types=["E", "E"], attempts=3)
    assert projection.name == "totals"
    assert [s.aggregate_type for s in projection.sources] == ["A"]
    assert projection.event_types == frozenset({"E"})
    assert projection.attempts == 3
    assert projection.partition is None
    assert view_projection(repository).event_types is None
    renamed = projection.renamed("totals_v2", projection.view_repository)
    assert (renamed.name, renamed.event_types, renamed.attempts) == ("totals_v2", {"E"}, 3)
    assert renamed.key is projection.key
    assert renamed.update is projection.update
    with pytest.raises(ValueError, match=r"^projection name must be"):
        view_projection(repository, name="")


@pytest.mark.parametrize("count", [0, -2, True, 2.0])
def test_partitions_need_a_positive_whole_count(repository, count):
    with pytest.raises(ConfigurationError) as raised:
        view_projection(repository).partitions(count)
    assert str(raised.value) == (
        f"a projection splits into a positive number of partitions, not {count!r}"
    )


def test_partitions_are_named_and_numbered(repository):
    parts = view_projection(repository).partitions(3)
    assert [p.name for p in parts] == ["totals.0of3", "totals.1of3", "totals.2of3"]
    assert [p.partition for p in parts] == [(0, 3), (1, 3), (2, 3)]
    assert [p.name for p in view_projection(repository).partitions(1)] == ["totals.0of1"]


async def test_views_are_written_once_per_key_and_events_at_or_below_a_view_are_skipped(
    repository,
):
    projection = view_projection(repository)
    made = runner(repository, [projection])
    assert await made.run_once() == 5
    views = projection.view_repository
    assert [(await views.load(f"x{n}")) for n in (1, 3, 5)] == [Seen([1]), Seen([3]), Seen([5])]
    assert await views.load("x2") is None
    # the same batch handed over again changes nothing
    await made.checkpoints.reset("totals")
    assert await made.run_once() == 5
    assert await views.load("x1") == Seen([1])


async def test_any_projection_splits_by_aggregate_into_named_partitions(repository):
    whole = Recorder("whole", [Decoder("A")])
    one = partitions(whole, 1)
    assert [p.name for p in one] == ["whole.0of1"]
    made = runner(repository, one)
    assert await made.run_once() == 5
    assert whole.batches == [[1, 3, 5]]  # one partition: every aggregate
    parts = partitions(whole, 2)
    assert [p.name for p in parts] == ["whole.0of2", "whole.1of2"]
    view_parts = partitions(view_projection(repository), 2)
    assert [p.name for p in view_parts] == ["totals.0of2", "totals.1of2"]
    for count in (0, True, 1.0):
        with pytest.raises(ConfigurationError) as raised:
            partitions(whole, count)  # type: ignore[arg-type]
        assert str(raised.value) == (
            f"a projection splits into a positive number of partitions, not {count!r}"
        )


async def test_switchable_views_write_the_version_given(repository):
    first = repository.view_repository(Seen, "first")
    views = SwitchableViews(first)
    await views.update_view(Seen([1]), ViewContext("v", 0), 7)
    loaded = await first.load_with_context("v")
    assert loaded is not None
    assert loaded[1].version == 7
    assert await views.load("v") == Seen([1])


def test_partition_of_takes_any_string_even_a_lone_surrogate():
    key = "acc-\ud800"  # what a JSON id with a lone escaped surrogate decodes to
    expected = zlib.crc32(key.encode("utf-8", "surrogatepass")) % 7
    assert partition_of(key, 7) == expected
    assert [partition_of("acc-1", 1), partition_of("", 3)] == [0, 0]


def test_switchable_views_cannot_point_at_themselves(repository):
    views = SwitchableViews(repository.view_repository(Seen, "first"))
    with pytest.raises(ConfigurationError) as raised:
        views.switch(views)
    assert str(raised.value) == "a SwitchableViews cannot point at itself"


async def test_run_once_skips_a_projection_another_runner_holds_and_goes_on(repository):
    held = Recorder("held", [Decoder("A")])
    free = Recorder("free", [Decoder("C")])
    made = runner(repository, [held, free], owner="me")
    assert await made.checkpoints.acquire("held", "other", 60) is not None
    assert await made.run_once() == 4
    assert (held.batches, free.batches) == ([], [[4]])
    assert made.status()["held"].state == "standby"
    assert await made.checkpoints.position("held") == 0
