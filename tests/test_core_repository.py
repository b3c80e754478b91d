"""The core's backend kit (cqrs.repository): the rules every backend applies the same way,
tested on the functions themselves."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from cqrs import (
    AggregateConflict,
    AsyncResource,
    BaseViewRepository,
    ConfigurationError,
    DeserializationError,
    MsgspecCodec,
    NotOpenError,
    SerializedEvent,
    SerializedSnapshot,
    ViewContext,
    check_batch,
    check_ids,
    check_page_size,
    decode_view,
    next_view_version,
    not_open,
    read_pages,
    stored_positions,
    validate_identifier,
)
from cqrs.repository import MAX_AGGREGATE_ID_BYTES, MAX_AGGREGATE_TYPE_BYTES, snapshot_and_events
from cqrs_memory import MemoryEventRepository

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def row(
    sequence: int,
    *,
    aggregate_id: str = "a1",
    aggregate_type: str = "T",
    position: int = 0,
    event_id: uuid.UUID | str | None = None,
) -> SerializedEvent:
    return SerializedEvent(
        aggregate_type,
        aggregate_id,
        sequence,
        "E",
        "1.0",
        b"{}",
        b"{}",
        NOW,
        uuid.uuid4() if event_id is None else event_id,
        position,
    )


# -- identifiers -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["events", "_x", "Events_2", "a" * 63])
def test_plain_identifiers_are_accepted_as_they_are(name):
    assert validate_identifier(name) == name


@pytest.mark.parametrize("name", ["", "2events", "a-b", "a b", "a" * 64, "ev;DROP", "é", None])
def test_anything_else_is_a_configuration_error_naming_it(name):
    with pytest.raises(ConfigurationError) as raised:
        validate_identifier(name)
    message = str(raised.value)
    assert message.startswith(f"invalid table name {name!r}: ")
    assert "letters, digits and underscores, not starting with a digit" in message
    assert "at most 63 characters" in message


def test_the_message_says_what_the_identifier_is_for():
    with pytest.raises(ConfigurationError, match=r"^invalid collection name 'a\.b'"):
        validate_identifier("a.b", "collection name")


# -- ids -------------------------------------------------------------------------------------


def test_ids_up_to_the_byte_limits_are_accepted():
    check_ids("T" * MAX_AGGREGATE_TYPE_BYTES, "x" * MAX_AGGREGATE_ID_BYTES)
    check_ids("T", "é" * (MAX_AGGREGATE_ID_BYTES // 2))  # two bytes each
    check_ids("ünï ✓", "𝄞")


@pytest.mark.parametrize(
    ("aggregate_type", "aggregate_id", "message"),
    [
        ("", "a", "aggregate_type must be a non-empty string, not ''"),
        (None, "a", "aggregate_type must be a non-empty string, not None"),
        ("T", "", "aggregate_id must be a non-empty string, not ''"),
        ("T", 7, "aggregate_id must be a non-empty string, not 7"),
        ("T\x00", "a", "aggregate_type must not contain NUL characters: 'T\\x00'"),
        ("T", "a\x00b", "aggregate_id must not contain NUL characters: 'a\\x00b'"),
        ("T" * 256, "a", "aggregate_type is 256 UTF-8 bytes long; the limit is 255: "),
        ("T", "é" * 513, "aggregate_id is 1026 UTF-8 bytes long; the limit is 1024: "),
    ],
)
def test_bad_ids_are_value_errors_naming_the_culprit(aggregate_type, aggregate_id, message):
    with pytest.raises(ValueError) as raised:  # noqa: PT011 - the message is checked below
        check_ids(aggregate_type, aggregate_id)
    assert str(raised.value).startswith(message)


def test_messages_quote_only_the_start_of_a_long_id():
    with pytest.raises(ValueError, match="NUL") as raised:
        check_ids("T", "n" * 100 + "\x00")
    assert f"{'n' * 80!r}" in str(raised.value)
    assert "n" * 81 not in str(raised.value)
    with pytest.raises(ValueError, match="limit") as raised:
        check_ids("T", "x" * 5000)
    assert str(raised.value).endswith(f"{'x' * 40!r}...")


# -- batches ---------------------------------------------------------------------------------


def test_a_batch_of_consecutive_events_of_one_aggregate_passes():
    check_batch([row(1)])
    check_batch([row(5), row(6), row(7)])


def test_an_empty_batch_is_refused():
    with pytest.raises(ValueError, match=r"^persist needs at least one event$"):
        check_batch([])


@pytest.mark.parametrize("sequence", [0, -1])
def test_sequences_start_at_one(sequence):
    with pytest.raises(ValueError, match=f"^sequences start at 1, not {sequence}$"):
        check_batch([row(sequence), row(sequence + 1)])


def test_a_gap_inside_a_batch_names_both_events():
    with pytest.raises(ValueError, match="consecutive") as raised:
        check_batch([row(3), row(4), row(6)])
    assert str(raised.value) == (
        "persist takes consecutive events of one aggregate; T 'a1' sequence 6 does not "
        "follow T 'a1' sequence 4"
    )


def test_a_batch_spanning_two_aggregates_is_refused():
    long_id = "b" * 100
    with pytest.raises(ValueError, match="consecutive events of one aggregate") as raised:
        check_batch([row(1, aggregate_id=long_id), row(2, aggregate_id="other")])
    message = str(raised.value)
    assert f"T 'other' sequence 2 does not follow T {'b' * 40!r} sequence 1" in message
    with pytest.raises(ValueError, match="consecutive events of one aggregate") as raised:
        check_batch([row(1), row(2, aggregate_id=long_id)])
    assert f"T {'b' * 40!r} sequence 2 does not follow T 'a1' sequence 1" in str(raised.value)
    with pytest.raises(ValueError, match="consecutive"):
        check_batch([row(1), row(2, aggregate_type="U")])


def test_the_ids_of_a_batch_are_checked():
    with pytest.raises(ValueError, match="aggregate_id must be a non-empty string"):
        check_batch([row(1, aggregate_id="")])


# -- idempotent persist ----------------------------------------------------------------------


def test_a_batch_found_stored_with_its_event_ids_gives_the_stored_positions():
    batch = [row(4), row(5)]
    stored = [
        row(4, event_id=str(batch[0].event_id), position=40),
        row(5, event_id=batch[1].event_id, position=41),
        row(6, position=57),  # written later by someone else
    ]
    assert stored_positions(batch, stored) == [40, 41]
    assert stored_positions(batch, stored[:2]) == [40, 41]


def test_a_batch_not_stored_as_it_is_gives_none():
    batch = [row(4), row(5)]
    same_ids = [row(4, event_id=batch[0].event_id), row(5, event_id=batch[1].event_id)]
    assert stored_positions(batch, same_ids[:1]) is None  # shorter than the batch
    assert stored_positions(batch, [same_ids[0], row(5)]) is None  # another writer's event
    assert stored_positions(batch, [row(5, event_id=batch[0].event_id), same_ids[1]]) is None
    assert stored_positions(batch, []) is None


# -- paging ----------------------------------------------------------------------------------


async def test_pages_follow_positions_until_a_short_page():
    rows = [row(i + 1, position=10 * (i + 1)) for i in range(7)]
    asked = []

    async def fetch(after):
        asked.append(after)
        return [r for r in rows if r.position > after][:3]

    assert [r.sequence async for r in read_pages(fetch, 0, 3)] == [1, 2, 3, 4, 5, 6, 7]
    assert asked == [0, 30, 60]  # each page goes on after the last event of the one before


async def test_pages_follow_sequences_when_asked():
    rows = [row(i + 1, position=100 + i) for i in range(6)]
    asked = []

    async def fetch(after):
        asked.append(after)
        return [r for r in rows if r.sequence > after][:3]

    sequences = [r.sequence async for r in read_pages(fetch, 0, 3, by_sequence=True)]
    assert sequences == [1, 2, 3, 4, 5, 6]
    assert asked == [0, 3, 6]  # a full last page costs one more (empty) read


# -- views -----------------------------------------------------------------------------------


@dataclass
class Tally:
    count: int = 0


def test_a_stored_view_decodes_to_its_type():
    assert decode_view(MsgspecCodec(), b'{"count": 3}', Tally, "view 'v1' in tallies") == Tally(3)


@pytest.mark.parametrize("payload", [b'{"count": "x"}', b"not json", '{"count": []}'])
def test_a_view_that_does_not_decode_names_where_it_is(payload):
    with pytest.raises(DeserializationError) as raised:
        decode_view(MsgspecCodec(), payload, Tally, "view 'v1' in tallies")
    assert str(raised.value).startswith("view 'v1' in tallies does not decode: ")
    assert isinstance(raised.value.__cause__, ValueError)


def test_view_versions_default_to_one_more_and_must_grow():
    context = ViewContext("v1", 3)
    assert next_view_version(context, None) == 4
    assert next_view_version(context, 9) == 9
    for bad in (3, 2, "5"):
        with pytest.raises(ValueError, match=f"greater than 3, not {bad!r}"):
            next_view_version(context, bad)


# -- lifecycle -------------------------------------------------------------------------------


def test_the_not_open_error_names_the_repository_and_the_fix():
    error = not_open("SqliteEventRepository('x.db')")
    assert isinstance(error, NotOpenError)
    assert isinstance(error, ConfigurationError)
    assert str(error) == (
        "SqliteEventRepository('x.db') is not open: call 'await repository.open()' or use "
        "'async with repository'"
    )


async def test_async_resource_opens_on_entry_and_closes_on_exit():
    calls = []

    class Resource(AsyncResource):
        async def open(self):
            calls.append("open")

        async def close(self):
            calls.append("close")

    resource = Resource()
    async with resource as entered:
        assert entered is resource
        assert calls == ["open"]
    assert calls == ["open", "close"]
    with pytest.raises(RuntimeError, match="inside"):
        async with resource:
            raise RuntimeError("inside")
    assert calls == ["open", "close", "open", "close"]
    async with AsyncResource() as plain:  # the mixin's own open/close do nothing
        assert isinstance(plain, AsyncResource)


# -- the view repository base ----------------------------------------------------------------


class DictViews(BaseViewRepository[Tally]):
    """A third-party-style view repository: rows in a dict, stored as they are given."""

    table_kind = "collection"

    def __init__(self, table: str = "tallies") -> None:
        super().__init__(Tally, table)
        self.rows: dict[str, tuple[object, object]] = {}

    async def _create_schema(self) -> None:
        pass

    async def _fetch(self, view_id: str) -> tuple[bytes | str, int] | None:
        return self.rows.get(view_id)  # type: ignore[return-value]

    async def _store(self, view_id: str, payload: bytes, version: int, expected: int) -> bool:
        self.rows[view_id] = (payload, version)
        return True


def test_a_view_table_name_is_checked_under_the_backends_word_for_tables():
    with pytest.raises(ConfigurationError, match=r"^invalid collection name 'a-b'"):
        DictViews("a-b")


@pytest.mark.parametrize("view_id", ["", "a\x00b", "x" * (MAX_AGGREGATE_ID_BYTES + 1)])
async def test_view_ids_are_checked_before_any_io(view_id):
    views = DictViews()
    with pytest.raises(ValueError, match=r"^view_id "):
        await views.load_with_context(view_id)
    with pytest.raises(ValueError, match=r"^view_id "):
        await views.update_view(Tally(), ViewContext(view_id, 0))
    assert views.rows == {}


async def test_a_stored_view_that_is_no_json_names_its_payload_type():
    views = DictViews()
    views.rows["v1"] = (12, 3)
    with pytest.raises(DeserializationError) as raised:
        await views.load("v1")
    assert str(raised.value) == (
        "view 'v1' in tallies (version 3) does not decode: its payload is int, not JSON"
    )


class LockingViews(DictViews):
    """DictViews with the optimistic lock every backend's ``_store`` keeps."""

    async def _store(self, view_id: str, payload: bytes, version: int, expected: int) -> bool:
        stored = self.rows.get(view_id)
        if (0 if stored is None else stored[1]) != expected:
            return False
        self.rows[view_id] = (payload, version)
        return True


async def test_the_view_base_encodes_stores_and_loads_views_with_their_version():
    views = LockingViews()
    assert await views.load("v1") is None
    assert await views.load_with_context("v1") is None
    await views.update_view(Tally(1), ViewContext("v1", 0))
    assert views.rows["v1"] == (b'{"count":1}', 1)
    assert await views.load("v1") == Tally(1)
    assert await views.load_with_context("v1") == (Tally(1), ViewContext("v1", 1))
    await views.update_view(Tally(2), ViewContext("v1", 1), 7)
    assert views.rows["v1"] == (b'{"count":2}', 7)
    assert await views.load_with_context("v1") == (Tally(2), ViewContext("v1", 7))
    with pytest.raises(ValueError, match="greater than 7, not 7"):
        await views.update_view(Tally(3), ViewContext("v1", 7), 7)


async def test_a_refused_view_write_says_whether_another_writer_came_first():
    views = LockingViews()
    await views.update_view(Tally(1), ViewContext("v1", 0))
    with pytest.raises(AggregateConflict) as raised:
        await views.update_view(Tally(2), ViewContext("v1", 0))
    assert str(raised.value) == (
        "view 'v1' in tallies was stored by another writer first (none was loaded)"
    )
    await views.update_view(Tally(2), ViewContext("v1", 1))
    with pytest.raises(AggregateConflict) as raised:
        await views.update_view(Tally(3), ViewContext("v1", 1))
    assert str(raised.value) == "view 'v1' in tallies is no longer at version 1"
    assert views.rows["v1"] == (b'{"count":2}', 2)


@pytest.mark.parametrize("version", [0, -1, True, "2", None, 1.0])
async def test_a_stored_view_version_that_is_no_positive_int_does_not_decode(version):
    views = DictViews()
    views.rows["v1"] = (b'{"count": 1}', version)
    with pytest.raises(DeserializationError) as raised:
        await views.load_with_context("v1")
    assert str(raised.value) == (
        f"view 'v1' in tallies (version {version!r}) does not decode: "
        "its version is not a positive int"
    )


async def test_a_stored_view_that_does_not_decode_names_its_id_table_and_version():
    views = DictViews()
    views.rows["v1"] = (b'{"count": "x"}', 2)
    with pytest.raises(DeserializationError) as raised:
        await views.load("v1")
    assert str(raised.value).startswith("view 'v1' in tallies (version 2) does not decode: ")


# -- page sizes ------------------------------------------------------------------------------


def test_a_positive_page_size_is_accepted_as_it_is():
    assert check_page_size(1) == 1
    assert check_page_size(500) == 500


@pytest.mark.parametrize("page_size", [0, -1, True, 1.5, "2", None])
def test_any_other_page_size_is_a_configuration_error_naming_it(page_size):
    with pytest.raises(ConfigurationError) as raised:
        check_page_size(page_size)
    assert str(raised.value) == f"page_size must be a positive int, not {page_size!r}"


# -- loading from a snapshot -----------------------------------------------------------------


class PortOnly:
    """A third-party repository with the port's methods only (no combined read)."""

    def __init__(self, repository: MemoryEventRepository) -> None:
        self.get_snapshot = repository.get_snapshot
        self.get_events = repository.get_events
        self.get_last_events = repository.get_last_events


class CombinedRead(PortOnly):
    """A repository that reads the snapshot and the events in one go (and says so)."""

    def __init__(self, repository: MemoryEventRepository) -> None:
        super().__init__(repository)
        self.calls: list[tuple[str, str]] = []

    async def get_snapshot_and_events(self, aggregate_type: str, aggregate_id: str):
        self.calls.append((aggregate_type, aggregate_id))
        return None, [row(9)]


async def test_snapshot_and_events_composes_the_port_methods_without_a_combined_read():
    async with MemoryEventRepository() as memory:
        await memory.persist([row(1), row(2), row(3)], None)
        await memory.persist([row(1, aggregate_id="a2")], None)
        repository = PortOnly(memory)
        snapshot, events = await snapshot_and_events(repository, "T", "a1")
        assert snapshot is None
        assert [e.sequence for e in events] == [1, 2, 3]
        stored = SerializedSnapshot("T", "a1", b"{}", 2, 1)
        await memory.persist([row(4)], stored)
        snapshot, events = await snapshot_and_events(repository, "T", "a1")
        assert snapshot == stored
        assert [e.sequence for e in events] == [3, 4]
        snapshot, events = await snapshot_and_events(repository, "T", "a2")
        assert (snapshot, [(e.aggregate_id, e.sequence) for e in events]) == (None, [("a2", 1)])
        assert await snapshot_and_events(repository, "U", "a1") == (None, [])


async def test_snapshot_and_events_uses_a_backends_combined_read():
    async with MemoryEventRepository() as memory:
        await memory.persist([row(1)], SerializedSnapshot("T", "a1", b"{}", 1, 1))
        repository = CombinedRead(memory)
        snapshot, events = await snapshot_and_events(repository, "T", "a1")
        assert (snapshot, [e.sequence for e in events]) == (None, [9])  # its answer, as it is
        assert repository.calls == [("T", "a1")]
