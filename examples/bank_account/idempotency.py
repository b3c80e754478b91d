"""Idempotency keys: a command retried with the same key commits nothing new and gets the
first result back, across restarts, on every backend.

How it stays correct under concurrent retries and crashes:

- **The key lives in the commit.** The events a keyed command commits carry the key (and a
  hash of the command) in their metadata, in the same atomic commit as the events. There is
  no second write that a crash could separate from the first: either the command and its
  key are stored, or neither is.
- **Looked up, then committed at the version seen.** Before executing, the account's keys
  are looked up: in :class:`IdempotencyIndex` (a view per account, key -> the sequences the
  command committed, kept by a ``GenericQuery`` in the events' database at the version of
  the last event it includes) and in the account's events after that version, whose
  metadata is read directly (the index may lag behind a commit whose process died before
  updating it; it heals at the next command). A key found there returns the events it
  committed. Otherwise the command runs with ``expected_version`` set to the last sequence
  the lookup saw: if anything was committed to the account in between (a parallel retry of
  the same key, or any other command), the commit fails with ``AggregateConflict`` and the
  lookup runs again, where it now finds the key. Two retries can therefore never both
  commit, whatever process or backend they run on.
- **Keys expire.** The index keeps a key for :data:`KEY_RETENTION` after the commit that
  stored it (measured on the events' timestamps); an older key is treated as new.

A refused command commits nothing and records nothing, so its retry is decided again. A key
repeated with a different command is refused (:class:`IdempotencyKeyReused`).
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import msgspec

from cqrs import (
    AggregateConflict,
    CqrsFramework,
    EventEnvelope,
    PersistedEventStore,
    ViewRepository,
)
from examples.bank_account.domain import (
    BankAccount,
    BankAccountCommand,
    BankAccountEvent,
    BankAccountServices,
)

KEY = "idempotency_key"
"""The metadata entry holding the key."""

REQUEST_HASH = "request_hash"
"""The metadata entry holding the SHA-256 of the command the key was first used for."""

KEY_RETENTION = timedelta(hours=24)
"""How long a key is honoured after its commit."""

ATTEMPTS = 50
"""Lookups and commits tried before giving up on a busy account (AggregateConflict)."""


class IdempotencyKeyReused(Exception):  # noqa: N818 - named for what the client did
    """The key was first used for another command on this account."""


@dataclass
class KeyRecord:
    """What a key committed: the sequences, the command's hash and the commit time."""

    first: int
    last: int
    request_hash: str
    timestamp: datetime


@dataclass
class IdempotencyIndex:
    """The keys used on one account within :data:`KEY_RETENTION`; a view kept by a
    ``GenericQuery`` (version = sequence of the last event applied)."""

    keys: dict[str, KeyRecord] = field(default_factory=dict)

    def update(self, event: EventEnvelope[Any]) -> None:
        """Record the event's key (if any) and forget the keys that expired."""
        key = event.metadata.get(KEY)
        if key is not None:
            record = self.keys.get(key)
            if record is None:
                request_hash = event.metadata.get(REQUEST_HASH, "")
                self.keys[key] = KeyRecord(
                    event.sequence, event.sequence, request_hash, event.timestamp
                )
            else:
                record.last = event.sequence
        horizon = event.timestamp - KEY_RETENTION
        for old in [k for k, record in self.keys.items() if record.timestamp < horizon]:
            del self.keys[old]


def request_hash(command: BankAccountCommand) -> str:
    """The SHA-256 of the command's type and fields (hex)."""
    encoded = msgspec.json.encode({type(command).__name__: command})
    return hashlib.sha256(encoded).hexdigest()


@dataclass(frozen=True, slots=True)
class Outcome:
    """A command's committed events; ``replayed`` when they were committed by an earlier
    request with the same key."""

    envelopes: list[EventEnvelope[BankAccountEvent]]
    replayed: bool


Framework = CqrsFramework[BankAccountCommand, BankAccountEvent, BankAccountServices]
Store = PersistedEventStore[BankAccount, BankAccountCommand, BankAccountEvent, BankAccountServices]


async def execute_once(
    cqrs: Framework,
    store: Store,
    index: ViewRepository[IdempotencyIndex],
    *,
    aggregate_id: str,
    command: BankAccountCommand,
    metadata: Mapping[str, str],
    key: str,
) -> Outcome:
    """Execute ``command`` unless ``key`` was used on ``aggregate_id`` already; see the module
    docstring. Raises what ``execute`` raises, IdempotencyKeyReused, and AggregateConflict
    after :data:`ATTEMPTS` tries on a busy account."""
    fingerprint = request_hash(command)
    keyed = {**metadata, KEY: key, REQUEST_HASH: fingerprint}
    for attempt in range(ATTEMPTS):
        if attempt:
            await asyncio.sleep(random.uniform(0, min(0.05, 0.002 * 2**attempt)))  # noqa: S311
        loaded = await index.load_with_context(aggregate_id)
        version = 0 if loaded is None else loaded[1].version
        record = None if loaded is None else loaded[0].keys.get(key)
        tail = [] if record is not None else await store.load_events(aggregate_id, version)
        if record is None:
            record = _record_in(tail, key)
        if record is not None:
            if record.request_hash != fingerprint:
                msg = "this Idempotency-Key was used for another command on this account"
                raise IdempotencyKeyReused(msg)
            first = await store.load_events(aggregate_id, record.first - 1)
            return Outcome([e for e in first if e.sequence <= record.last], replayed=True)
        last = tail[-1].sequence if tail else version
        try:
            envelopes = await cqrs.execute_with_metadata(
                aggregate_id, command, keyed, expected_version=last
            )
        except AggregateConflict:
            continue
        return Outcome(envelopes, replayed=False)
    msg = f"account {aggregate_id!r} kept changing; gave up after {ATTEMPTS} attempts"
    raise AggregateConflict(msg)


def _record_in(events: list[EventEnvelope[BankAccountEvent]], key: str) -> KeyRecord | None:
    found = [e for e in events if e.metadata.get(KEY) == key]
    if not found:
        return None
    first = found[0]
    return KeyRecord(
        first.sequence, found[-1].sequence, first.metadata.get(REQUEST_HASH, ""), first.timestamp
    )
