"""What every raw side shares: the domain work, with no framework in between.

A raw side reads rows with the backend's own statements, decodes each payload with a typed
msgspec decoder (the core codec's settings), applies it to the bench account, lets the
account decide, encodes the new events with the same msgspec encoder and writes them with
the backend's own statements and round trips. It builds no envelopes, serialized-event
objects, timestamps or UUIDs for what it reads, and does no validation beyond the conflict
check the backend's statements contain: the physical limit of this design.
Subclasses supply the I/O (one method per round trip).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec

from benchmarks.domain import AMOUNT, BenchAccount, DepositMany, amounts, open_command
from benchmarks.workloads import Operation, commit_groups_with_tasks
from examples.bank_account.domain import (
    BankAccountServices,
    BankAccountView,
    DepositMoney,
)

__all__ = ["AGGREGATE_TYPE", "RawSide", "Snapshot", "ViewEvent", "encoder", "new_event_ids"]

AGGREGATE_TYPE = BenchAccount.aggregate_type

encoder = msgspec.json.Encoder(decimal_format="string")
"""The core codec's JSON settings (``Decimal`` as a string)."""

METADATA = b"{}"
"""Every benchmark command commits with no metadata."""

# Sequence, event_type, event_version, payload, ...: the column order of the backends' reads.
SEQUENCE, EVENT_TYPE, PAYLOAD = 0, 1, 3


_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)


def new_event_ids(count: int) -> list[uuid.UUID]:
    """``count`` random (version 4) UUIDs from one ``os.urandom`` call (as the core does)."""
    entropy = os.urandom(16 * count)
    return [
        uuid.UUID(int=(int.from_bytes(entropy[i : i + 16]) & _UUID4_CLEAR) | _UUID4_SET)
        for i in range(0, 16 * count, 16)
    ]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A snapshot row to write with a commit."""

    payload: bytes
    last_sequence: int
    version: int


class ViewEvent:
    """What a view update needs of an envelope: the sequence (the view's version is the last
    sequence applied, as in ``GenericQuery``) and the payload ``BankAccountView.update``
    reads."""

    __slots__ = ("payload", "sequence")

    def __init__(self, sequence: int, payload: object) -> None:
        self.sequence = sequence
        self.payload = payload


Row = tuple[Any, ...]


class RawSide:
    """The domain work of the raw sides; subclasses do the reads and writes."""

    name = "raw"

    load_before_create = False
    """Whether creating an aggregate reads its (absent) events first. The framework does
    not when told ``expected_version=0`` (the unique key still rejects a duplicate), and the
    benchmark's creations say so; raw makes the same round trips."""

    def __init__(self, *, snapshot_every: int | None = None, batch_size: int = 500) -> None:
        self.snapshot_every = snapshot_every
        self.batch_size = batch_size
        self._decoders: dict[str, Callable[[bytes | str], Any]] = {
            cls.__name__: msgspec.json.Decoder(cls).decode for cls in BenchAccount.event_classes
        }
        self._snapshot_decoder = msgspec.json.Decoder(BenchAccount).decode
        self._view_decoder = msgspec.json.Decoder(BankAccountView).decode
        self._services = BankAccountServices()
        self._snapshot_versions: dict[str, int] = {}

    async def open(self) -> None:
        """Connect and create the tables."""
        raise NotImplementedError

    async def close(self) -> None:
        """Disconnect."""
        raise NotImplementedError

    # -- I/O, one round trip each -----------------------------------------------------------

    async def read_events(self, aggregate_id: str, after: int) -> list[Row]:
        """The rows of ``aggregate_id`` after sequence ``after`` (backend column order)."""
        raise NotImplementedError

    async def read_snapshot(self, aggregate_id: str) -> tuple[bytes | str, int, int] | None:
        """(payload, last_sequence, snapshot version) or None."""
        raise NotImplementedError

    async def read_snapshot_and_events(
        self, aggregate_id: str
    ) -> tuple[tuple[bytes | str, int, int] | None, list[Row]]:
        """The snapshot (as :meth:`read_snapshot`) and the rows after it, in the backend's
        one round trip; by default (a backend with two) :meth:`read_snapshot` then
        :meth:`read_events`."""
        snapshot = await self.read_snapshot(aggregate_id)
        return snapshot, await self.read_events(
            aggregate_id, 0 if snapshot is None else snapshot[1]
        )

    async def write_events(
        self,
        aggregate_id: str,
        version: int,
        events: Sequence[object],
        payloads: list[bytes],
        *,
        timestamp: datetime,
        snapshot: Snapshot | None,
    ) -> None:
        """Insert the events after ``version`` (and the snapshot) in one transaction."""
        raise NotImplementedError

    async def read_page(self, after: int, limit: int) -> list[Row]:
        """Events of the aggregate type after ``after`` by position: (aggregate_type,
        aggregate_id, sequence, event_type, event_version, payload, ..., position)."""
        raise NotImplementedError

    async def create_view_table(self, table: str) -> str:
        """Create the view table; return its full name."""
        raise NotImplementedError

    async def read_view(self, table: str, view_id: str) -> tuple[bytes | str, int] | None:
        """(payload, version) or None."""
        raise NotImplementedError

    async def write_view(
        self, table: str, view_id: str, payload: bytes, loaded: int, version: int
    ) -> None:
        """Insert (``loaded`` 0) or update the view if still at ``loaded``; store it at
        ``version``."""
        raise NotImplementedError

    # -- the domain work ----------------------------------------------------------------------

    async def _load(self, aggregate_id: str) -> tuple[BenchAccount, int]:
        account: BenchAccount | None = None
        after = 0
        if self.snapshot_every is None:
            rows = await self.read_events(aggregate_id, after)
        else:
            snapshot, rows = await self.read_snapshot_and_events(aggregate_id)
            if snapshot is not None:
                account = self._snapshot_decoder(snapshot[0])
                after = snapshot[1]
                self._snapshot_versions[aggregate_id] = snapshot[2]
        if account is None:
            account = BenchAccount()
        account.aggregate_id = aggregate_id
        apply, decoders = account.apply, self._decoders
        for row in rows:
            apply(decoders[row[EVENT_TYPE]](row[PAYLOAD]))
        return account, rows[-1][SEQUENCE] if rows else after

    async def _execute(self, aggregate_id: str, command: object, *, new: bool = False) -> None:
        if new and not self.load_before_create:
            account, version = BenchAccount(), 0
            account.aggregate_id = aggregate_id
        else:
            account, version = await self._load(aggregate_id)
        events = await account.handle(command, self._services)  # type: ignore[arg-type]
        encode = encoder.encode
        payloads = [encode(event) for event in events]
        snapshot = None
        every = self.snapshot_every
        last = version + len(events)
        if every is not None and version // every != last // every:
            for event in events:
                account.apply(event)
            snapshot = Snapshot(
                encode(account), last, self._snapshot_versions.get(aggregate_id, 0) + 1
            )
            self._snapshot_versions[aggregate_id] = snapshot.version
        await self.write_events(
            aggregate_id, version, events, payloads, timestamp=datetime.now(UTC), snapshot=snapshot
        )

    async def create(self, aggregate_id: str, events: int) -> None:
        await self._execute(aggregate_id, open_command(aggregate_id, events), new=True)

    async def grow(self, aggregate_id: str, events: int) -> None:
        await self._execute(aggregate_id, DepositMany(amounts(events)))

    async def deposit(self, aggregate_id: str) -> None:
        await self._execute(aggregate_id, DepositMoney(AMOUNT))

    async def load(self, aggregate_id: str) -> object:
        return (await self._load(aggregate_id))[0]

    async def commit_groups(self, groups: list[list[str]]) -> None:
        await commit_groups_with_tasks(self, groups)

    async def prepare_replay(self, table: str) -> Operation | None:
        full = await self.create_view_table(table)
        page_size, batch_size, decoders = self.page_size, self.batch_size, self._decoders

        async def replay() -> int:
            count, after = 0, 0
            batch_id: str | None = None
            batch: list[ViewEvent] = []
            while True:
                page = await self.read_page(after, page_size)
                for row in page:
                    aggregate_id = row[1]
                    if batch and (aggregate_id != batch_id or len(batch) >= batch_size):
                        await self._update_view(full, batch_id, batch)  # type: ignore[arg-type]
                        count += len(batch)
                        batch = []
                    batch_id = aggregate_id
                    batch.append(ViewEvent(row[2], decoders[row[3]](row[5])))
                if len(page) < page_size:
                    break
                after = page[-1][-1]
            if batch:
                await self._update_view(full, batch_id, batch)  # type: ignore[arg-type]
                count += len(batch)
            return count

        return replay

    page_size = 500

    async def prepare_catchup(self, table: str, events: int) -> list[Operation] | None:  # noqa: ARG002 - no checkpoints
        """One step: page through the events with the backend's page statement and page
        size, rows left undecoded, until a short page (as ``stream_all_events`` ends)."""
        page_size = self.page_size

        async def stream() -> int:
            count, after = 0, 0
            while True:
                rows = await self.read_page(after, page_size)
                count += len(rows)
                if len(rows) < page_size:
                    return count
                after = rows[-1][-1]

        return [stream]

    async def prepare_view_upsert(self, table: str, events: int) -> list[Operation] | None:  # noqa: ARG002
        return None

    async def _update_view(self, table: str, view_id: str, events: list[ViewEvent]) -> None:
        stored = await self.read_view(table, view_id)
        if stored is None:
            view, version = BankAccountView(), 0
        else:
            view, version = self._view_decoder(stored[0]), stored[1]
        pending = [event for event in events if event.sequence > version]
        if not pending:
            return
        if pending[0].sequence != version + 1:
            msg = f"view {view_id!r} is at {version}, events start at {pending[0].sequence}"
            raise RuntimeError(msg)
        for event in pending:
            view.update(event)  # type: ignore[arg-type]
        await self.write_view(table, view_id, encoder.encode(view), version, pending[-1].sequence)
