"""Runner batches read as EventRow tuples (a backend's ``read_event_rows``) and decoded
straight from them (``PersistedEventStore.decode_rows``): the same envelopes, the same
errors and the same runner behaviour as the SerializedEvent path."""

from __future__ import annotations

import asyncio
import gc
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import msgspec
import pytest

from cqrs import (
    CqrsFramework,
    DeserializationError,
    EventEnvelope,
    PersistedEventStore,
    SerializedEvent,
)
from cqrs.projection import ProjectionRunner
from cqrs.repository import EventRow, row_event, row_events
from cqrs.upcasting import SemanticVersionEventUpcaster
from cqrs_memory import MemoryEventRepository
from cqrs_sqlite import SqliteEventRepository
from examples.bank_account.domain import (
    BankAccount,
    BankAccountServices,
    CustomerDepositedMoney,
    DepositMoney,
    OpenAccount,
)


def renamed_amount(payload: dict[str, Any]) -> dict[str, Any]:
    return {"amount": payload.pop("amt"), **payload}


def store() -> PersistedEventStore[Any, Any, Any, Any]:
    return PersistedEventStore(MemoryEventRepository(), BankAccount).with_upcasters(
        [SemanticVersionEventUpcaster("CustomerDepositedMoney", "1.0", renamed_amount)]
    )


def stored_rows() -> list[EventRow]:
    """Rows as a driver hands them out: text and UUID event ids, text and datetime
    timestamps (with and without an offset), metadata None, empty or not, and a deposit
    stored at an older version that an upcaster renames."""
    when = datetime(2026, 1, 2, tzinfo=UTC)
    ids = [uuid.UUID(int=n) for n in range(1, 6)]
    return [
        ("BankAccount", "a", 1, "AccountOpened", "1.0", '{"account_id":"a"}', None,
         "2026-01-02 00:00:00.000000+00:00", str(ids[0]), 1),
        ("BankAccount", "a", 2, "CustomerDepositedMoney", "0.9",
         b'{"amt":"5.00","balance":"5.00"}', b'{"k":"v"}', "2026-01-02 00:00:00.000000+00:00",
         ids[1], 2),
        ("BankAccount", "a", 3, "CustomerDepositedMoney", "1.0",
         '{"amount":"1.00","balance":"6.00"}', "{}", "2026-01-02 00:00:01", str(ids[2]), 3),
        ("BankAccount", "a", 4, "CustomerDepositedMoney", "0.9",
         '{"amt":"2.00","balance":"8.00"}', b"{}", when, str(ids[3]).upper(), 4),
        ("BankAccount", "b", 1, "AccountOpened", "1.0", '{"account_id":"b"}', '{"u":"x"}',
         when, str(ids[4]), 7),
    ]  # fmt: skip


def test_row_event_is_the_serialized_event_of_the_row():
    rows = stored_rows()
    events = [row_event(row) for row in rows]
    assert events[0] == SerializedEvent(
        "BankAccount", "a", 1, "AccountOpened", "1.0", '{"account_id":"a"}', "{}",
        datetime(2026, 1, 2, tzinfo=UTC), str(uuid.UUID(int=1)), 1,
    )  # fmt: skip
    assert events[2].timestamp == datetime(2026, 1, 2, 0, 0, 1, tzinfo=UTC)  # naive: UTC
    assert events[3].timestamp is rows[3][7]
    assert [e.position for e in events] == [1, 2, 3, 4, 7]
    assert row_events(rows) == events
    assert row_events([]) == []


def test_decode_rows_gives_what_decode_all_gives():
    decoder = store()
    rows = stored_rows()
    envelopes = decoder.decode_rows(rows)
    assert envelopes == decoder.decode_all([row_event(row) for row in rows])
    assert envelopes == [decoder.decode(row_event(row)) for row in rows]
    amounts = [e.payload.amount for e in envelopes if isinstance(e.payload, CustomerDepositedMoney)]
    assert amounts == [Decimal(5), Decimal(1), Decimal(2)]
    assert [e.metadata for e in envelopes] == [{}, {"k": "v"}, {}, {}, {"u": "x"}]
    assert [e.event_id for e in envelopes] == [uuid.UUID(int=n) for n in range(1, 6)]
    assert all(isinstance(e.event_id, uuid.UUID) for e in envelopes)
    assert envelopes[2].timestamp == datetime(2026, 1, 2, 0, 0, 1, tzinfo=UTC)
    assert decoder.decode_rows([]) == []


def _replace(row: EventRow, index: int, value: object) -> EventRow:
    return tuple(value if i == index else field for i, field in enumerate(row))  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("index", "column", "value", "error"),
    [
        (2, 5, '{"amount":"x"}', DeserializationError),
        (2, 3, "Nope", DeserializationError),
        (1, 6, b"[1]", DeserializationError),
        (3, 5, '{"amt":1', DeserializationError),  # an upcast row that is not JSON
        (3, 8, "not-a-uuid", ValueError),
    ],
)
def test_decode_rows_raises_the_error_of_the_first_row_that_does_not_decode(
    index, column, value, error
):
    decoder = store()
    rows = stored_rows()
    rows[index] = _replace(rows[index], column, value)
    with pytest.raises(error) as row_by_row:
        decoder.decode(row_event(rows[index]))
    with pytest.raises(error) as page:
        decoder.decode_rows(rows)
    assert str(page.value) == str(row_by_row.value)


@pytest.fixture
def collecting() -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    try:
        yield
    finally:
        if not was:
            gc.disable()


@pytest.mark.usefixtures("collecting")
def test_decode_rows_pauses_the_collector_only_while_it_decodes():
    decoder = store()
    seen: list[bool] = []
    original = decoder.codec

    class Watching:
        def __getattr__(self, name: str) -> Any:
            return getattr(original, name)

        def decode(self, data: bytes | str, type_: type[Any]) -> Any:
            seen.append(gc.isenabled())
            return original.decode(data, type_)

    decoder.codec = Watching()
    decoder.decode_rows(stored_rows())
    assert seen
    assert not any(seen)
    assert gc.isenabled()
    bad = stored_rows()
    bad[0] = _replace(bad[0], 5, "{")
    with pytest.raises(DeserializationError):
        decoder.decode_rows(bad)
    assert gc.isenabled()
    gc.disable()  # a caller that turned it off keeps it off
    decoder.decode_rows(stored_rows())
    assert not gc.isenabled()


class Recorded:
    """A projection of one store's every event that keeps what it is handed."""

    event_types: frozenset[str] | None = None

    def __init__(self, name: str, source: PersistedEventStore[Any, Any, Any, Any]) -> None:
        self.name, self.sources = name, (source,)
        self.envelopes: list[EventEnvelope[Any]] = []

    async def handle(self, events: Sequence[EventEnvelope[Any]]) -> None:
        self.envelopes.extend(events)


class Deposits(Recorded):
    """Only the deposits: the runner filters SerializedEvents for it."""

    event_types = frozenset({"CustomerDepositedMoney"})


async def _sqlite_bank(tmp_path: Any) -> tuple[SqliteEventRepository, Any, Any]:
    repository = SqliteEventRepository(str(tmp_path / "rows.db"))
    await repository.open()
    await repository.create_schema()
    decoder = PersistedEventStore(repository, BankAccount)
    bank = CqrsFramework(decoder, services=BankAccountServices())
    for number in range(3):
        name = f"acc-{number}"
        await bank.execute(name, OpenAccount(name))
        for amount in range(1, 5):
            await bank.execute_with_metadata(
                name, DepositMoney(Decimal(amount)), {"n": str(amount)}
            )
    checkpoints = repository.checkpoint_store("rows_cp")
    await checkpoints.create_schema()
    return repository, decoder, checkpoints


async def test_a_sqlite_runner_reads_rows_and_hands_over_what_the_stream_decodes(tmp_path):
    repository, decoder, checkpoints = await _sqlite_bank(tmp_path)
    try:
        everything, deposits = Recorded("all", decoder), Deposits("deposits", decoder)
        pages: list[int] = []
        decode_rows = decoder.decode_rows

        def counted(rows: Sequence[EventRow]) -> list[EventEnvelope[Any]]:
            pages.append(len(rows))
            decoded: list[EventEnvelope[Any]] = decode_rows(rows)
            return decoded

        decoder.decode_rows = counted
        runner = ProjectionRunner(
            repository, checkpoints, [everything, deposits], owner="t", batch_size=4
        )
        task = asyncio.create_task(runner.run())
        try:
            await runner.wait_for(2**62, timeout=30)
        finally:
            runner.stop()
            await asyncio.wait_for(task, 30)
        expected = [decoder.decode(row) async for row in repository.stream_all_events(None, 0)]
        assert everything.envelopes == expected
        assert deposits.envelopes == [
            e for e in expected if isinstance(e.payload, CustomerDepositedMoney)
        ]
        assert expected[1].metadata == {"n": "1"}
        # The whole-type projection's batches were decoded from the tuples (the filtered
        # one's as SerializedEvents): 15 events in batches of 4.
        assert pages == [4, 4, 4, 3]
        status = runner.status()["all"]
        assert status.checkpoint == status.saved == expected[-1].position
        assert status.head == expected[-1].position
    finally:
        await repository.close()


async def test_a_sqlite_runner_stops_right_before_an_event_that_does_not_decode(tmp_path):
    repository, decoder, checkpoints = await _sqlite_bank(tmp_path)
    try:
        table = repository.events_table
        await repository.run(
            lambda c: c.execute(f"UPDATE {table} SET payload = '{{' WHERE position = 7")  # noqa: S608
        )
        everything = Recorded("all", decoder)
        runner = ProjectionRunner(
            repository, checkpoints, [everything], owner="t", batch_size=5, attempts=1
        )
        await asyncio.wait_for(runner.run(), 30)
        status = runner.status()["all"]
        assert status.state == "failed"
        assert "position 7" in (status.error or "")
        assert [e.position for e in everything.envelopes] == [1, 2, 3, 4, 5, 6]
        assert await checkpoints.position("all") == 6
    finally:
        await repository.close()


def test_the_runner_reads_rows_only_from_repositories_that_have_the_reader():
    assert hasattr(SqliteEventRepository(), "read_event_rows")
    assert not hasattr(MemoryEventRepository(), "read_event_rows")
    assert msgspec.convert(["00000000-0000-0000-0000-000000000001"], list[uuid.UUID]) == [
        uuid.UUID(int=1)
    ]
