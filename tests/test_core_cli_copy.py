"""``cqrs.cli.copying``: the copy's name, its checksum, its report and callbacks, resuming
from the checkpoint it keeps in the target, and completing a target that holds part of the
events (through ``persist`` alone: the memory backend has no ``import_events``)."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta

import msgspec
import pytest

import cqrs
from cqrs import SerializedEvent, SerializedSnapshot
from cqrs.cli.copying import (
    COPY_TABLE,
    Checksum,
    CopyError,
    CopyReport,
    checksum_of,
    copy_events,
    copy_name,
)

START = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


def events_of(
    aggregate_id: str, first: int, last: int, *, aggregate_type: str = "Account"
) -> list[SerializedEvent]:
    return [
        SerializedEvent(
            aggregate_type,
            aggregate_id,
            sequence,
            "Deposited",
            "1.0",
            f'{{"amount": {sequence}}}',
            '{"user": "ann"}',
            START + timedelta(seconds=sequence),
            uuid.uuid5(uuid.NAMESPACE_URL, repr((aggregate_type, aggregate_id, sequence))),
        )
        for sequence in range(first, last + 1)
    ]


def snap(aggregate_id: str, last: int, aggregate_type: str = "Account") -> SerializedSnapshot:
    return SerializedSnapshot(aggregate_type, aggregate_id, f'{{"balance": {last}}}', last, 1)


async def store(
    repository: cqrs.PersistedEventRepository,
    batches: Sequence[tuple[list[SerializedEvent], SerializedSnapshot | None]],
) -> None:
    for batch, snapshot in batches:
        await repository.persist(batch, snapshot)


# Interleaved: a 1-2, b 1-3 (snapshot at 3), a 3-4 (snapshot at 4), o 1-2 (Order), b 4.
BATCHES = [
    (events_of("a", 1, 2), None),
    (events_of("b", 1, 3), snap("b", 3)),
    (events_of("a", 3, 4), snap("a", 4)),
    (events_of("o", 1, 2, aggregate_type="Order"), None),
    (events_of("b", 4, 4), None),
]


async def everything(
    repository: cqrs.PersistedEventRepository, aggregate_type: str | None = None
) -> list[tuple[object, ...]]:
    return [
        (e.aggregate_type, e.aggregate_id, e.sequence, str(e.event_id), e.payload, e.timestamp)
        async for e in repository.stream_all_events(aggregate_type)
    ]


async def snapshots_of(
    repository: cqrs.PersistedEventRepository, keys: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], int | None]:
    found = {}
    for key in keys:
        snapshot = await repository.get_snapshot(*key)
        found[key] = None if snapshot is None else snapshot.last_sequence
    return found


KEYS = [("Account", "a"), ("Account", "b"), ("Order", "o")]


# -- copy_name -------------------------------------------------------------------------------


def test_copy_name_names_the_source_redacted_and_the_type():
    assert copy_name("sqlite:///data/a.db", None) == "copy from sqlite:///data/a.db"
    assert copy_name("sqlite:///data/a.db", "Order") == "copy from sqlite:///data/a.db type Order"
    assert copy_name("postgresql://ann:secret@db/x", None) == "copy from postgresql://ann:***@db/x"


def test_a_long_copy_name_is_shortened_with_a_digest():
    fits = "sqlite:///" + "d" * (200 - len("copy from sqlite:///"))
    assert len(copy_name(fits, None)) == 200
    assert copy_name(fits, None) == f"copy from {fits}"
    longer = [fits + "x", fits + "y"]
    names = [copy_name(url, None) for url in longer]
    for name in names:
        head, _, digest = name.rpartition(" ")
        assert head == f"copy from {fits}"[:180]
        assert len(digest) == 16
        int(digest, 16)
    assert names[0] != names[1]  # the digest tells them apart
    assert copy_name(longer[0], None) == names[0]  # and is stable


# -- Checksum --------------------------------------------------------------------------------


def _documented_digest(rows: Sequence[SerializedEvent]) -> str:
    """The digest as the Checksum docstring describes it."""
    digest = hashlib.blake2b(digest_size=16)
    for row in rows:
        timestamp = row.timestamp if row.timestamp.tzinfo else row.timestamp.replace(tzinfo=UTC)
        micros = (timestamp - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
        fields = (
            row.aggregate_type,
            row.aggregate_id,
            str(row.sequence),
            row.event_type,
            row.event_version,
            str(micros),
            str(row.event_id),
        )
        digest.update("".join(f"{field}\x1f" for field in fields).encode("utf-8", "surrogatepass"))
        for part, end in ((row.payload, b"\x1f"), (row.metadata, b"\x1e")):
            data = part if isinstance(part, bytes) else part.encode("utf-8", "surrogatepass")
            digest.update(data + end)
    return digest.hexdigest()


def test_the_checksum_is_the_documented_digest():
    rows = [*events_of("a", 1, 2), *events_of("\ud800-lone", 1, 1, aggregate_type="Ünï")]
    rows.append(
        SerializedEvent(
            "Account", "c", 1, "Opened", "2.1", b'{"x": "\xc3\xa9"}', b"{}", START, uuid.uuid4()
        )
    )
    checksum = Checksum()
    assert checksum.count == 0
    assert checksum.hexdigest() == hashlib.blake2b(digest_size=16).hexdigest()
    for row in rows:
        checksum.add(row)
    assert checksum.count == 4
    assert checksum.hexdigest() == _documented_digest(rows)
    assert len(checksum.hexdigest()) == 32


def test_naive_timestamps_are_utc_and_text_equals_its_utf8_bytes():
    aware = events_of("a", 1, 1)[0]
    naive = msgspec.structs.replace(aware, timestamp=aware.timestamp.replace(tzinfo=None))
    texts = msgspec.structs.replace(
        aware,
        payload='{"s": "\ud800"}',  # a lone surrogate, as some drivers hand over
        metadata='{"m": "é"}',
    )
    as_bytes = msgspec.structs.replace(
        aware,
        payload='{"s": "\ud800"}'.encode("utf-8", "surrogatepass"),
        metadata='{"m": "é"}'.encode(),
        event_id=str(aware.event_id),
    )
    digests = []
    for rows in ([aware], [naive], [texts], [as_bytes]):
        checksum = Checksum()
        for row in rows:
            checksum.add(row)
        digests.append(checksum.hexdigest())
    assert digests[0] == digests[1]
    assert digests[2] == digests[3] != digests[0]


def test_checksum_of_a_different_timestamp_differs_by_a_microsecond():
    row = events_of("a", 1, 1)[0]
    later = msgspec.structs.replace(row, timestamp=row.timestamp + timedelta(microseconds=1))
    first, second = Checksum(), Checksum()
    first.add(row)
    second.add(later)
    assert first.hexdigest() != second.hexdigest()


async def test_checksum_of_reports_progress_per_thousand_and_the_rest():
    async with cqrs.connect("memory://") as repository:
        await repository.persist(events_of("a", 1, 2000), None)
        await repository.persist(events_of("o", 1, 500, aggregate_type="Order"), None)
        calls: list[int] = []
        whole = await checksum_of(repository, None, calls.append)
        assert calls == [1000, 1000, 500]
        assert whole.count == 2500
        even: list[int] = []
        accounts = await checksum_of(repository, "Account", even.append)
        assert even == [1000, 1000]
        assert accounts.count == 2000
        orders = await checksum_of(repository, "Order")
        assert orders.count == 500
        assert (await checksum_of(repository, "Account")).hexdigest() == accounts.hexdigest()
        rows = [e async for e in repository.stream_all_events("Order")]
    assert orders.hexdigest() == _documented_digest(rows)


# -- copy_events -----------------------------------------------------------------------------


class Calls:
    """The callbacks of copy_events, recorded."""

    def __init__(self) -> None:
        self.totals: list[int | None] = []
        self.progress: list[int] = []
        self.verify_totals: list[int | None] = []
        self.verified: list[int] = []

    def kwargs(self) -> dict[str, object]:
        def on_verify(total: int | None):
            self.verify_totals.append(total)
            return self.verified.append

        return {
            "on_total": self.totals.append,
            "on_progress": self.progress.append,
            "on_verify": on_verify,
        }


async def test_a_copy_into_an_importing_target_reports_what_it_did(tmp_path):
    source_url = f"sqlite:///{tmp_path / 's.db'}"
    target_url = f"sqlite:///{tmp_path / 't.db'}"
    calls = Calls()
    async with cqrs.connect(source_url) as source, cqrs.connect(target_url) as target:
        await store(source, BATCHES)
        began = time.perf_counter()
        report = await copy_events(
            source,
            target,
            source_url=source_url,
            target_url=target_url,
            chunk_size=3,
            **calls.kwargs(),  # type: ignore[arg-type]
        )
        took = time.perf_counter() - began
        assert await everything(target) == await everything(source)
        assert await snapshots_of(target, KEYS) == {KEYS[0]: 4, KEYS[1]: 3, KEYS[2]: None}
        checkpoints = target.checkpoint_store(COPY_TABLE)
        assert await checkpoints.position(copy_name(source_url, None)) == 10
        # The lease was released: another copy may start at once.
        assert await checkpoints.acquire(copy_name(source_url, None), "another", 60) is not None
    assert calls.totals == [10]
    assert calls.progress == [3, 3, 3, 1]
    assert calls.verify_totals == [10]  # this run read the source whole: the target alone
    assert sum(calls.verified) == 10
    assert report.source == source_url
    assert report.target == target_url
    assert report.aggregate_type is None
    assert report.resumed_after == 0
    assert (report.read, report.written, report.snapshots) == (10, 10, 2)
    assert 0 < report.seconds <= took
    assert report.source_count == report.target_count == 10
    assert report.source_checksum == report.target_checksum
    assert report.equal
    assert report.as_dict() == {
        "source": source_url,
        "target": target_url,
        "type": None,
        "resumed_after": 0,
        "read": 10,
        "written": 10,
        "skipped": 0,
        "snapshots": 2,
        "seconds": round(report.seconds, 3),
        "events_per_second": round(report.rate, 1),
        "source_count": 10,
        "target_count": 10,
        "source_checksum": report.source_checksum,
        "target_checksum": report.target_checksum,
        "equal": True,
    }
    assert report.rate == pytest.approx(10 / report.seconds)


async def test_a_second_run_resumes_after_the_checkpoint(tmp_path):
    source_url = f"sqlite:///{tmp_path / 's.db'}"
    target_url = f"sqlite:///{tmp_path / 't.db'}"
    async with cqrs.connect(source_url) as source, cqrs.connect(target_url) as target:
        await store(source, BATCHES)
        first = await copy_events(source, target, source_url=source_url, target_url=target_url)
        assert first.read == 10
        await store(source, [(events_of("a", 5, 7), None), (events_of("c", 1, 2), snap("c", 2))])
        calls = Calls()
        again = await copy_events(
            source,
            target,
            source_url=source_url,
            target_url=target_url,
            chunk_size=2,
            **calls.kwargs(),  # type: ignore[arg-type]
        )
        assert await everything(target) == await everything(source)
    assert again.resumed_after == 10
    assert (again.read, again.written, again.snapshots) == (5, 5, 2)  # a at 4, c at 2
    assert calls.totals == [5]  # only what follows the checkpoint
    assert calls.progress == [2, 2, 1]
    assert calls.verify_totals == [None]  # both sides are read again
    assert sum(calls.verified) == 2 * 15
    assert again.source_count == again.target_count == 15
    assert again.equal
    assert again.as_dict()["skipped"] == 0


async def test_a_copy_of_one_type_counts_and_resumes_within_it(tmp_path):
    source_url = f"sqlite:///{tmp_path / 's.db'}"
    target_url = f"sqlite:///{tmp_path / 't.db'}"
    async with cqrs.connect(source_url) as source, cqrs.connect(target_url) as target:
        await store(source, BATCHES)
        calls = Calls()
        report = await copy_events(
            source,
            target,
            source_url=source_url,
            target_url=target_url,
            aggregate_type="Account",
            **calls.kwargs(),  # type: ignore[arg-type]
        )
        assert await everything(target) == await everything(source, "Account")
        name = copy_name(source_url, "Account")
        assert await target.checkpoint_store(COPY_TABLE).position(name) == 10
        assert report.aggregate_type == "Account"
        assert report.as_dict()["type"] == "Account"
        assert calls.totals == [8]
        assert (report.read, report.source_count, report.target_count) == (8, 8, 8)
        # The orders too, in their own copy: each copy compares its own type only.
        orders = await copy_events(
            source, target, source_url=source_url, target_url=target_url, aggregate_type="Order"
        )
        assert (orders.read, orders.source_count, orders.target_count) == (2, 2, 2)
        assert orders.equal
        await store(source, [(events_of("o", 3, 3, aggregate_type="Order"), None)])
        await store(source, [(events_of("b", 5, 5), None)])
        calls = Calls()
        again = await copy_events(
            source,
            target,
            source_url=source_url,
            target_url=target_url,
            aggregate_type="Account",
            **calls.kwargs(),  # type: ignore[arg-type]
        )
    assert again.resumed_after == 10
    assert calls.totals == [1]
    assert again.read == 1
    assert sum(calls.verified) == 2 * 9
    assert (again.source_count, again.target_count) == (9, 9)
    assert again.equal


async def test_the_default_chunk_holds_five_thousand_events():
    async with cqrs.connect("memory://") as source, cqrs.connect("memory://") as target:
        await source.persist(events_of("a", 1, 5001), None)
        calls = Calls()
        report = await copy_events(
            source,
            target,
            source_url="memory://source",
            target_url="memory://target",
            **calls.kwargs(),  # type: ignore[arg-type]
        )
    assert calls.progress == [5000, 1]
    assert calls.totals == [None]  # the memory backend cannot count
    assert report.written == 5001
    assert report.equal


async def test_through_persist_runs_of_interleaved_aggregates_keep_their_snapshots():
    async with cqrs.connect("memory://") as source, cqrs.connect("memory://") as target:
        await store(source, BATCHES)
        await store(source, [(events_of("a", 5, 5), None), (events_of("b", 5, 6), snap("b", 6))])
        report = await copy_events(
            source, target, source_url="memory://s", target_url="memory://t", chunk_size=4
        )
        assert await everything(target) == await everything(source)
        assert await snapshots_of(target, KEYS) == {KEYS[0]: 4, KEYS[1]: 6, KEYS[2]: None}
    assert (report.read, report.written) == (13, 13)
    assert report.snapshots == 2
    assert report.equal


async def test_a_snapshot_ahead_of_the_chunk_is_written_with_the_events_that_reach_it():
    async with cqrs.connect("memory://") as source, cqrs.connect("memory://") as target:
        await source.persist(events_of("a", 1, 5), snap("a", 5))
        await source.persist(events_of("b", 1, 1), None)
        report = await copy_events(
            source, target, source_url="memory://s", target_url="memory://t", chunk_size=2
        )
        assert await snapshots_of(target, KEYS[:2]) == {KEYS[0]: 5, KEYS[1]: None}
        assert await everything(target) == await everything(source)
    assert report.snapshots == 1


async def test_a_partly_copied_run_is_completed_and_only_the_rest_counted():
    async with cqrs.connect("memory://") as source, cqrs.connect("memory://") as target:
        await source.persist(events_of("a", 1, 4), None)
        await source.persist(events_of("b", 1, 2), None)
        await target.persist(events_of("a", 1, 2), None)  # a copy died after these
        report = await copy_events(source, target, source_url="memory://s", target_url="memory://t")
        assert await everything(target, "Account") == [
            row for row in await everything(source) if row[1] == "a"
        ][:2] + [row for row in await everything(source) if row[1] == "a"][2:] + [
            row for row in await everything(source) if row[1] == "b"
        ]
    assert (report.read, report.written) == (6, 4)
    assert report.as_dict()["skipped"] == 2
    assert report.target_count == report.source_count == 6


async def _resume_at(target: cqrs.PersistedEventRepository, source_url: str, position: int):
    """Leave the checkpoint of a copy from ``source_url`` at ``position``, released."""
    checkpoints = target.checkpoint_store(COPY_TABLE)
    await checkpoints.create_schema()
    lease = await checkpoints.acquire(copy_name(source_url, None), "a copy that died", 60)
    assert lease is not None
    await checkpoints.save(lease, position)
    await checkpoints.release(lease)


async def test_a_resumed_run_whose_head_is_stored_already_stores_the_rest():
    async with cqrs.connect("memory://") as source, cqrs.connect("memory://") as target:
        await source.persist(events_of("a", 1, 2), None)  # positions 1, 2
        await source.persist(events_of("a", 3, 6), snap("a", 6))  # positions 3..6
        await target.persist(events_of("a", 1, 4), None)  # stored beyond the checkpoint
        await _resume_at(target, "memory://s", 2)
        report = await copy_events(source, target, source_url="memory://s", target_url="memory://t")
        assert await everything(target) == await everything(source)
        assert await snapshots_of(target, KEYS[:1]) == {KEYS[0]: 6}
    assert report.resumed_after == 2
    assert (report.read, report.written) == (4, 2)


async def test_a_different_event_in_the_target_stops_the_copy_with_its_place():
    async with cqrs.connect("memory://") as source, cqrs.connect("memory://") as target:
        await source.persist(events_of("a", 1, 3), None)
        other = events_of("a", 1, 2)
        await target.persist(
            [other[0], msgspec.structs.replace(other[1], event_id=uuid.uuid4())],
            None,
        )
        with pytest.raises(CopyError) as caught:
            await copy_events(source, target, source_url="memory://s", target_url="memory://t")
    assert str(caught.value) == (
        "the target holds a different event at Account 'a' sequence 2 (another event id), "
        "or misses the events before it; nothing more was copied"
    )


@pytest.mark.parametrize("checkpoint", [1, 2])
async def test_a_run_whose_earlier_events_the_target_lacks_stops_the_copy(checkpoint):
    async with cqrs.connect("memory://") as source, cqrs.connect("memory://") as target:
        for sequence in range(1, 5):
            await source.persist(events_of("a", sequence, sequence), None)
        await _resume_at(target, "memory://s", checkpoint)  # but the target holds nothing
        with pytest.raises(CopyError) as refused:
            await copy_events(source, target, source_url="memory://s", target_url="memory://t")
        assert await everything(target) == []
    assert str(refused.value).startswith(
        f"the target holds a different event at Account 'a' sequence {checkpoint + 1} "
    )


async def test_a_conflict_stops_the_copy_while_the_reader_is_ahead(tmp_path):
    async with cqrs.connect("memory://") as source, cqrs.connect("memory://") as target:
        await source.persist(events_of("a", 1, 1), None)
        for number in range(60):
            await source.persist(events_of(f"x{number}", 1, 1), None)
        stranger = msgspec.structs.replace(events_of("a", 1, 1)[0], event_id=uuid.uuid4())
        await target.persist([stranger], None)
        async with asyncio.timeout(30):
            with pytest.raises(CopyError, match="sequence 1"):
                await copy_events(
                    source, target, source_url="memory://s", target_url="memory://t", chunk_size=1
                )
        # The reader, chunks ahead, was stopped with the copy: nothing is left running.
        assert asyncio.all_tasks() == {asyncio.current_task()}
        assert (
            await target.checkpoint_store(COPY_TABLE).position(copy_name("memory://s", None)) == 0
        )


async def test_a_copy_running_into_the_target_is_not_disturbed():
    async with cqrs.connect("memory://") as source, cqrs.connect("memory://") as target:
        await source.persist(events_of("a", 1, 1), None)
        checkpoints = target.checkpoint_store(COPY_TABLE)
        lease = await checkpoints.acquire(copy_name("memory://s", None), "other host", 60)
        assert lease is not None
        with pytest.raises(CopyError) as caught:
            await copy_events(
                source, target, source_url="memory://s", target_url="memory://user:pw@t"
            )
        assert await everything(target) == []
    assert str(caught.value) == (
        "another copy from memory://s into this target is running (its lease lasts 60 s "
        "after its last chunk); try again later"
    )


async def test_a_copy_whose_lease_is_taken_over_stops():
    async with cqrs.connect("memory://") as source, cqrs.connect("memory://") as target:
        for number in range(6):
            await source.persist(events_of(f"a{number}", 1, 1), None)
        checkpoints = target.checkpoint_store(COPY_TABLE)
        name = copy_name("memory://s", None)
        pending: list[asyncio.Task[None]] = []

        def take_over(count: int) -> None:
            # Another copy resets the checkpoint: the token moves on, fencing this one.
            if not pending:
                pending.append(asyncio.ensure_future(checkpoints.reset(name, 0)))

        with pytest.raises(CopyError) as caught:
            await copy_events(
                source,
                target,
                source_url="memory://s",
                target_url="memory://t",
                chunk_size=2,
                on_progress=take_over,
            )
        await asyncio.gather(*pending)
        assert len(await everything(target)) < 6
    assert str(caught.value) == (
        "another copy from the same source into this target took over; this one stops"
    )


def test_a_report_without_time_has_no_rate_and_compares_counts_and_checksums():
    report = CopyReport("s", "t", None, 0, read=5)
    assert report.rate == 0.0
    assert report.equal  # nothing on either side

    def compared(counts: tuple[int, int], checksums: tuple[str, str]) -> bool:
        return CopyReport(
            "s",
            "t",
            None,
            0,
            source_count=counts[0],
            target_count=counts[1],
            source_checksum=checksums[0],
            target_checksum=checksums[1],
        ).equal

    assert compared((5, 5), ("x", "x"))
    assert not compared((5, 5), ("x", "y"))
    assert not compared((5, 4), ("x", "x"))
    timed = CopyReport("s", "t", "Order", 7, read=10, written=4, seconds=2.0)
    assert timed.rate == 5.0
    data = timed.as_dict()
    assert (data["skipped"], data["events_per_second"], data["resumed_after"]) == (6, 5.0, 7)
    precise = CopyReport("s", "t", None, 0, read=1, seconds=0.123456)
    assert precise.as_dict()["seconds"] == 0.123
    assert precise.as_dict()["events_per_second"] == round(1 / 0.123456, 1) == 8.1


class _FailingSource:
    """A memory repository whose global stream fails after ``good`` events."""

    def __init__(self, repository: cqrs.PersistedEventRepository, good: int) -> None:
        self._repository = repository
        self.good = good

    def __getattr__(self, name: str) -> object:
        return getattr(self._repository, name)

    async def stream_all_events(
        self, aggregate_type: str | None, after_position: int | None = None
    ) -> AsyncIterator[SerializedEvent]:
        read = 0
        async for event in self._repository.stream_all_events(aggregate_type, after_position):
            if read == self.good:
                await asyncio.sleep(0.01)  # the copy waits for the next chunk meanwhile
                msg = "the source went away"
                raise cqrs.DatabaseConnectionError(msg)
            read += 1
            yield event


async def test_a_source_failing_mid_way_fails_the_copy_with_its_error():
    async with cqrs.connect("memory://") as source, cqrs.connect("memory://") as target:
        for number in range(10):
            await source.persist(events_of(f"a{number}", 1, 1), None)
        for good in (0, 4, 5):
            async with asyncio.timeout(30):
                with pytest.raises(cqrs.DatabaseConnectionError, match="the source went away"):
                    await copy_events(
                        _FailingSource(source, good),  # type: ignore[arg-type]
                        target,
                        source_url="memory://s",
                        target_url="memory://t",
                        chunk_size=2,
                    )
            assert asyncio.all_tasks() == {asyncio.current_task()}
        name = copy_name("memory://s", None)
        # Each run resumed where the last one stopped: 0, then 2 chunks, then 2 more.
        assert await target.checkpoint_store(COPY_TABLE).position(name) == 8
        assert len(await everything(target)) == 8


async def test_an_importing_target_counts_only_what_it_stored(tmp_path):
    source_url = f"sqlite:///{tmp_path / 's.db'}"
    target_url = f"sqlite:///{tmp_path / 't.db'}"
    async with cqrs.connect(source_url) as source, cqrs.connect(target_url) as target:
        await source.persist(events_of("a", 1, 2), None)  # positions 1, 2
        await source.persist(events_of("a", 3, 6), None)  # positions 3..6
        await target.persist(events_of("a", 1, 6), None)  # all there already
        await _resume_at(target, source_url, 2)
        report = await copy_events(source, target, source_url=source_url, target_url=target_url)
        assert await everything(target) == await everything(source)
    assert (report.read, report.written) == (4, 0)
    assert report.as_dict()["skipped"] == 4


class _FailingTarget:
    """A memory repository, through the port alone, whose ``fail_at``-th persist fails."""

    def __init__(self, repository: cqrs.PersistedEventRepository, fail_at: int) -> None:
        self._repository = repository
        self.fail_at = fail_at
        self.calls = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self._repository, name)

    async def persist(
        self, events: Sequence[SerializedEvent], snapshot: SerializedSnapshot | None
    ) -> list[int]:
        self.calls += 1
        if self.calls == self.fail_at:
            msg = "the target went away"
            raise cqrs.DatabaseConnectionError(msg)
        return await self._repository.persist(events, snapshot)


async def test_a_snapshot_goes_with_the_last_run_of_its_aggregate_in_a_chunk():
    async with cqrs.connect("memory://") as source, cqrs.connect("memory://") as target:
        await source.persist(events_of("a", 1, 1), None)
        await source.persist(events_of("b", 1, 1), None)
        await source.persist(events_of("a", 2, 2), snap("a", 2))
        failing = _FailingTarget(target, fail_at=2)  # the copy dies after the run a 1
        with pytest.raises(cqrs.DatabaseConnectionError):
            await copy_events(
                source,
                failing,  # type: ignore[arg-type]
                source_url="memory://s",
                target_url="memory://t",
            )
        assert [row[:3] for row in await everything(target)] == [("Account", "a", 1)]
        assert await target.get_snapshot("Account", "a") is None  # never ahead of its events
