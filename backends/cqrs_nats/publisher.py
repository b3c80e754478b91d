"""The publisher projection: committed events out to JetStream, exactly once, in order.

The event store is the outbox. :class:`JetStreamPublisher` is a projection a
:class:`~cqrs.ProjectionRunner` runs like any other: it gets the committed events after its
checkpoint in batches, publishes each (or the integration event a mapper makes of it) to
``<prefix>.<aggregate_type>.<aggregate_id>``, and returns only when JetStream acknowledged
every message, so the checkpoint never moves past an event that is not stored.

Exactly once: each message's ``Nats-Msg-Id`` is the event id, so republishing a batch after
a crash, a takeover or an outage is a no-op within the stream's duplicate window. For the
first batch of a publisher, after a failed batch, and then for as long as batches hold
events stored before, the last message stored on each aggregate's subject is also read,
and the events it already holds are not sent again: so a republish later than the
duplicate window (a long outage, a checkpoint reset) does not duplicate either. This
covers what a previous runner may have sent when the batch size is not made smaller
across the restart; the duplicate window covers a stale runner still sending.

Order: an aggregate's events are stored in their order. A batch is sent in waves: each
wave sends the next event of every aggregate in the batch (up to ``max_in_flight``
messages in flight at once) and waits for their acknowledgements, so an aggregate's next
event leaves only after JetStream acknowledged the previous one (a message lost with a
broken connection can never be overtaken by its successor), while different aggregates go
side by side. Different aggregates' events may be stored in another order than their
global positions.

Outages: when NATS is unreachable the batch raises :class:`~cqrs_nats.BrokerUnavailableError`
(a DatabaseConnectionError): the runner keeps the checkpoint and retries until NATS is
back, and :meth:`JetStreamPublisher.status` says ``paused`` meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js.api import PubAck
from nats.js.client import JetStreamContext

from cqrs import (
    Codec,
    ConfigurationError,
    CqrsError,
    EventDecoder,
    EventEnvelope,
    default_codec,
    event_type_of,
    event_version_of,
)
from cqrs.checkpoints import check_lease_name
from cqrs_nats.messages import IntegrationEvent, headers_for
from cqrs_nats.streams import NETWORK_ERRORS, BrokerUnavailableError, check_stream
from cqrs_nats.subjects import check_prefix, escape_token, subject_for

__all__ = ["JetStreamPublisher", "Mapper", "PublishRefusedError", "PublisherStatus"]

logger = logging.getLogger("cqrs.nats")

Key = tuple[str, str]


class Mapper(Protocol):
    """A function that makes the integration event to publish of a committed event, or
    returns None to publish nothing for it. It runs for every event handed to the
    publisher, again when a batch is retried: keep it pure."""

    def __call__(self, envelope: EventEnvelope[Any], /) -> IntegrationEvent | None:
        """The integration event of ``envelope``, or None."""
        ...


class PublishRefusedError(CqrsError):
    """JetStream refused a message for a reason other than an outage (the stream is gone,
    full with ``discard: new``, the message too large...). The runner's failure policy
    applies: the batch is retried, then the projection stops or parks the event."""


@dataclass(slots=True)
class PublisherStatus:
    """What the publisher is doing.

    ``state``: ``idle`` (nothing published yet), ``publishing`` (the last batch went
    through), or ``paused`` (NATS unreachable since ``paused_since``; ``error`` says why;
    it resumes by itself). ``connected`` is the client's view now. ``published`` counts
    the messages JetStream stored, ``duplicates`` those it had already (a republish),
    ``skipped`` those found stored before sending, ``dropped`` the events the mapper
    dropped; ``position`` is the position of the last event acknowledged.
    """

    state: Literal["idle", "publishing", "paused"] = "idle"
    connected: bool = False
    paused_since: datetime | None = None
    error: str | None = None
    published: int = 0
    duplicates: int = 0
    skipped: int = 0
    dropped: int = 0
    position: int = 0


@dataclass(slots=True)
class _Outgoing:
    subject: str
    data: bytes
    headers: dict[str, str]
    sequence: int
    position: int


class JetStreamPublisher:
    """A projection that publishes the events of ``sources`` to JetStream stream
    ``stream`` over ``client`` (see the module for the guarantees).

    ``name`` is its checkpoint's name; ``prefix`` the first subject token(s); ``mapper``
    (optional) makes the integration event to publish, or None to drop the event;
    ``event_types`` limits the events handed to it (None: all). ``codec`` encodes
    payloads (default: the first source's codec, else the default codec). At most
    ``max_in_flight`` messages await an acknowledgement at once; each must be acknowledged
    within ``ack_timeout`` seconds, else NATS counts as unreachable. The stream is checked
    with :func:`~cqrs_nats.check_stream` before the first batch, with
    ``min_duplicate_window`` seconds as the shortest duplicate window accepted: keep it
    above the runner's ``lease_ttl`` plus ``ack_timeout``. Constructing it does no I/O.

    Give its runner a ``batch_size`` of about 1,000: each wave of a batch waits one round
    trip, so a batch holding many aggregates publishes fastest.
    """

    def __init__(
        self,
        client: Client,
        stream: str,
        sources: Sequence[EventDecoder],
        *,
        name: str = "nats-publisher",
        prefix: str = "events",
        mapper: Mapper | None = None,
        event_types: Collection[str] | None = None,
        codec: Codec | None = None,
        max_in_flight: int = 1000,
        ack_timeout: float = 5.0,
        min_duplicate_window: float = 60.0,
    ) -> None:
        self._name = check_lease_name(name)
        if not isinstance(max_in_flight, int) or max_in_flight < 1:
            msg = f"max_in_flight must be a positive int, not {max_in_flight!r}"
            raise ConfigurationError(msg)
        if not ack_timeout > 0:
            msg = f"ack_timeout must be > 0 seconds, not {ack_timeout!r}"
            raise ConfigurationError(msg)
        self.client = client
        self.stream = stream
        self.prefix = check_prefix(prefix)
        self.mapper = mapper
        self._sources = tuple(sources)
        self._event_types = None if event_types is None else frozenset(event_types)
        default = getattr(self._sources[0], "codec", None) if self._sources else None
        self.codec: Codec = codec or default or default_codec
        self.max_in_flight = max_in_flight
        self.ack_timeout = float(ack_timeout)
        self.min_duplicate_window = float(min_duplicate_window)
        self._status = PublisherStatus()
        self._checked = False
        self._suspect = True  # the first batch may have been published by a runner before

    @property
    def name(self) -> str:
        """The projection's name (its checkpoint)."""
        return self._name

    @property
    def sources(self) -> Sequence[EventDecoder]:
        """The stores whose events it publishes."""
        return self._sources

    @property
    def event_types(self) -> Collection[str] | None:
        """The event types it publishes (None: all)."""
        return self._event_types

    def status(self) -> PublisherStatus:
        """The publisher's status now (a copy)."""
        status = self._status
        return PublisherStatus(
            status.state,
            self.client.is_connected,
            status.paused_since,
            status.error,
            status.published,
            status.duplicates,
            status.skipped,
            status.dropped,
            status.position,
        )

    async def handle(self, events: Sequence[EventEnvelope[Any]]) -> None:
        """Publish the batch and return once JetStream stored every message (or had it
        already); raise BrokerUnavailableError while NATS is unreachable, PublishRefusedError when
        JetStream refuses a message."""
        lanes, dropped = self._lanes(events)
        try:
            await self._wait_connected()
            if not self._checked:
                subjects = [
                    f"{self.prefix}.{escape_token(source.aggregate_type)}.*"
                    for source in self._sources
                ]
                await check_stream(
                    self.client,
                    self.stream,
                    subjects=subjects,
                    min_duplicate_window=self.min_duplicate_window,
                )
                self._checked = True
            suspect = self._suspect
            if suspect and lanes:
                # Keep looking up while batches hold events stored before: after a crash,
                # a reset or an outage, that range may be longer than one batch.
                suspect = await self._skip_stored(lanes) > 0
            await self._send(lanes)
        except BrokerUnavailableError as error:
            self._suspect = True
            if self._status.state != "paused":
                self._status.paused_since = datetime.now(UTC)
                logger.warning("publisher %r paused: %s", self._name, error)
            self._status.state, self._status.error = "paused", str(error)
            raise
        except BaseException:
            self._suspect = True
            raise
        if self._status.state == "paused":
            logger.info("publisher %r resumed", self._name)
        self._suspect = suspect
        self._status.dropped += dropped
        self._status.state, self._status.paused_since, self._status.error = "publishing", None, None
        if events:
            self._status.position = events[-1].position

    def _lanes(
        self, events: Sequence[EventEnvelope[Any]]
    ) -> tuple[dict[Key, list[_Outgoing]], int]:
        """The messages of the batch, one lane per aggregate, each in sequence order, and
        how many events the mapper dropped."""
        lanes: dict[Key, list[_Outgoing]] = {}
        dropped = 0
        encode, mapper = self.codec.encode, self.mapper
        for envelope in events:
            extra: dict[str, str] = {}
            if mapper is None:
                event_type = event_type_of(envelope.payload)
                version = event_version_of(envelope.payload)
                data = encode(envelope.payload)
            else:
                result: object = mapper(envelope)  # checked: a user's function
                if result is None:
                    dropped += 1
                    continue
                if not isinstance(result, IntegrationEvent):
                    msg = (
                        f"the mapper returned {result!r} for event {envelope.event_id} "
                        f"({envelope.aggregate_type} {envelope.aggregate_id!r} sequence "
                        f"{envelope.sequence}); expected an IntegrationEvent or None"
                    )
                    raise TypeError(msg)
                mapped = result
                event_type, version = mapped.event_type, mapped.event_version
                payload = mapped.payload
                data = bytes(payload) if isinstance(payload, bytes | bytearray) else encode(payload)
                extra = dict(mapped.headers)
            key = (envelope.aggregate_type, envelope.aggregate_id)
            headers = headers_for(envelope, event_type, version)
            if extra:
                headers = {**extra, **headers}
            lane = lanes.get(key)
            if lane is None:
                lane = lanes[key] = []
                subject = subject_for(self.prefix, *key)
            else:
                subject = lane[0].subject
            lane.append(_Outgoing(subject, data, headers, envelope.sequence, envelope.position))
        return lanes, dropped

    async def _wait_connected(self) -> None:
        """Wait up to ack_timeout for the client to be connected (it reconnects itself)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ack_timeout
        while not self.client.is_connected:
            if self.client.is_closed:
                msg = "the NATS client is closed"
                raise BrokerUnavailableError(msg)
            if loop.time() > deadline:
                msg = f"NATS unreachable for {self.ack_timeout:g} s (reconnecting)"
                raise BrokerUnavailableError(msg)
            await asyncio.sleep(0.05)

    async def _skip_stored(self, lanes: dict[Key, list[_Outgoing]]) -> int:
        """Drop from each lane the events its subject's last stored message covers; return
        how many."""
        js = self.client.jetstream()

        async def last_sequence(subject: str) -> int:
            try:
                message = await js.get_last_msg(self.stream, subject)
            except nats.js.errors.NotFoundError:
                return 0
            except NETWORK_ERRORS as error:
                msg = f"NATS did not answer a look-up of {subject!r}: {error!r}"
                raise BrokerUnavailableError(msg) from error
            headers = message.headers or {}
            return int(headers.get("Cqrs-Sequence", 0))

        keys, skipped = list(lanes), 0
        for start in range(0, len(keys), 64):
            chunk = keys[start : start + 64]
            stored = await asyncio.gather(*(last_sequence(lanes[k][0].subject) for k in chunk))
            for key, sequence in zip(chunk, stored, strict=True):
                lane = lanes[key]
                kept = [message for message in lane if message.sequence > sequence]
                skipped += len(lane) - len(kept)
                lanes[key] = kept
        self._status.skipped += skipped
        return skipped

    async def _send(self, lanes: dict[Key, list[_Outgoing]]) -> None:
        """Send in waves: the next message of up to max_in_flight lanes, then their acks."""
        js = self.client.jetstream()
        queues = [deque(lane) for lane in lanes.values() if lane]
        while queues:
            active = queues[: self.max_in_flight]
            await self._publish_wave(js, [queue[0] for queue in active])
            for queue in active:
                queue.popleft()
            queues = [queue for queue in queues if queue]

    async def _publish_wave(self, js: JetStreamContext, wave: list[_Outgoing]) -> None:
        futures: list[asyncio.Future[PubAck]] = []
        try:
            async with asyncio.timeout(self.ack_timeout):
                futures.extend(
                    [await js.publish_async(m.subject, m.data, headers=m.headers) for m in wave]
                )
                acks = [await future for future in futures]
        except nats.js.errors.APIError as error:
            msg = f"JetStream refused a message to stream {self.stream!r}: {error.description}"
            raise PublishRefusedError(msg) from error
        except nats.js.errors.NoStreamResponseError as error:
            raise self._no_stream(wave[0].subject) from error
        except NETWORK_ERRORS as error:
            msg = f"NATS did not acknowledge {len(wave)} message(s) in time: {error!r}"
            raise BrokerUnavailableError(msg) from error
        except nats.errors.Error as error:  # a bad header, a message too large...
            msg = f"NATS refused a message to {wave[0].subject!r}: {error!r}"
            raise PublishRefusedError(msg) from error
        finally:
            _settle(futures)
        status = self._status
        for ack in acks:
            if ack.stream != self.stream:
                msg = f"stream {ack.stream!r} stored a message meant for {self.stream!r}"
                raise PublishRefusedError(msg)
            if ack.duplicate:
                status.duplicates += 1
            else:
                status.published += 1

    def _no_stream(self, subject: str) -> CqrsError:
        if not self.client.is_connected:
            return BrokerUnavailableError("NATS went away while publishing")
        msg = f"no JetStream stream captures {subject!r} (expected {self.stream!r})"
        return PublishRefusedError(msg)


def _settle(futures: list[asyncio.Future[PubAck]]) -> None:
    """Cancel the acknowledgements still awaited; mark the failed ones as seen."""
    for future in futures:
        if not future.done():
            future.cancel()
        elif not future.cancelled():
            future.exception()
