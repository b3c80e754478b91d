"""The consumer side: a durable JetStream pull consumer feeding a projection.

Another service runs the same kind of :class:`~cqrs.Projection` it would run over an event
store (a :class:`~cqrs.ViewProjection`, say) on the events a :class:`JetStreamPublisher`
published. :class:`JetStreamConsumer` fetches batches from a durable consumer, turns each
message back into the event the store held (same event id, sequence, position, metadata,
timestamp; decoded by the projection's sources, so upcasters apply), hands the batch to
the projection, and acknowledges the messages only after ``handle`` returned, i.e. after
the projection committed. The durable consumer keeps the place across restarts.

Failures: when ``handle`` raises, the messages are handed over one by one, so the ones
before the failing message take effect; the failing message and every later one of the
batch are negatively acknowledged (in order, so JetStream hands them over again first),
and the consumer waits a growing delay. A message that failed on its
``dead_letter_after``-th delivery is published to ``dead_letter_subject`` (if set, with an
``Cqrs-Error`` header) and terminated, so one bad event does not stop the service.

Idempotence: delivery is at least once. A message redelivered after its effect was
committed (the consumer died before its acknowledgement, or the acknowledgement was lost)
carries the same event id and position, so handlers can tell: a ViewProjection skips events
at or below a view's version, which makes views keyed within one aggregate exactly once
(per-aggregate order is kept from the event store to the consumer). Events of *different*
aggregates may arrive out of global order, so do not feed a view that several aggregates
update (totals per day, say) through a ViewProjection here: its skip-at-or-below-version
rule would drop an earlier event that arrives after a later one; make such a handler
idempotent by event id instead, or run that view over the event store. The consumer also
skips event ids it acknowledged recently itself. For the order to hold after a crash, a
consumer that starts and finds messages still unacknowledged waits ``ack_wait`` for their
redelivery before it reads on, and at most ``batch_size`` messages are outstanding.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext

from cqrs import ConfigurationError, DatabaseConnectionError, EventEnvelope, Projection
from cqrs.checkpoints import check_lease_name
from cqrs_nats.messages import serialized_event
from cqrs_nats.streams import NETWORK_ERRORS, BrokerUnavailableError, StreamSettingsError
from cqrs_nats.subjects import check_prefix

__all__ = ["ConsumerStatus", "JetStreamConsumer"]

logger = logging.getLogger("cqrs.nats")

_REMEMBERED = 10_000


@dataclass(slots=True)
class ConsumerStatus:
    """What the consumer has done: ``state`` is ``starting``, ``running``, ``paused``
    (NATS or the projection's database unreachable; ``error`` says why), ``stopped`` or
    ``failed``. ``applied`` counts the events handed to the projection and acknowledged,
    ``ignored`` those acknowledged without it (no source decodes their aggregate type, an
    event type it does not handle, or an event id acknowledged before), ``retried`` the
    negative acknowledgements, ``dead_lettered`` the messages set aside."""

    state: Literal["starting", "running", "paused", "stopped", "failed"] = "starting"
    error: str | None = None
    applied: int = 0
    ignored: int = 0
    retried: int = 0
    dead_lettered: int = 0


class JetStreamConsumer:
    """Feeds ``projection`` from the durable pull consumer ``durable`` of stream
    ``stream`` (created when missing: explicit acks, ``ack_wait`` seconds, deliver all,
    subjects ``filter_subject`` or ``<prefix>.>``), ``batch_size`` messages at a time.
    ``dead_letter_subject`` (optional) receives the messages that failed on their
    ``dead_letter_after``-th delivery (a stream must capture it, or they are retried
    instead). Failed batches wait ``retry_delay`` seconds, doubling up to 5 s. See the
    module for the guarantees. Constructing it does no I/O.
    """

    def __init__(
        self,
        client: Client,
        stream: str,
        durable: str,
        projection: Projection,
        *,
        prefix: str = "events",
        filter_subject: str | None = None,
        batch_size: int = 100,
        ack_wait: float = 30.0,
        fetch_timeout: float = 1.0,
        dead_letter_subject: str | None = None,
        dead_letter_after: int = 5,
        retry_delay: float = 0.1,
    ) -> None:
        check_lease_name(durable, "durable consumer name")
        if not isinstance(batch_size, int) or batch_size < 1:
            msg = f"batch_size must be a positive int, not {batch_size!r}"
            raise ConfigurationError(msg)
        if not isinstance(dead_letter_after, int) or dead_letter_after < 1:
            msg = f"dead_letter_after must be a positive int, not {dead_letter_after!r}"
            raise ConfigurationError(msg)
        if not ack_wait > 0 or not fetch_timeout > 0 or not retry_delay >= 0:
            msg = "ack_wait and fetch_timeout must be > 0, retry_delay >= 0"
            raise ConfigurationError(msg)
        self.client = client
        self.stream = stream
        self.durable = durable
        self.projection = projection
        self.filter_subject = filter_subject or f"{check_prefix(prefix)}.>"
        self.batch_size = batch_size
        self.ack_wait = float(ack_wait)
        self.fetch_timeout = float(fetch_timeout)
        self.dead_letter_subject = dead_letter_subject
        self.dead_letter_after = dead_letter_after
        self.retry_delay = float(retry_delay)
        self._decoders = {source.aggregate_type: source for source in projection.sources}
        self._status = ConsumerStatus()
        self._subscription: JetStreamContext.PullSubscription | None = None
        self._acked: OrderedDict[str, None] = OrderedDict()
        self._stopping = asyncio.Event()
        self._failures = 0

    def status(self) -> ConsumerStatus:
        """The consumer's status (a live object: read, don't change)."""
        return self._status

    def stop(self) -> None:
        """Ask :meth:`run` to return after the current batch."""
        self._stopping.set()

    async def run(self) -> None:
        """Fetch, apply and acknowledge until :meth:`stop` or cancellation; NATS outages,
        database outages and a stream that does not exist yet pause it (status ``paused``,
        ``error`` says why) and it resumes by itself. Any other error marks it ``failed``
        and is raised."""
        self._stopping.clear()
        try:
            while not self._stopping.is_set():
                try:
                    await self.run_once()
                except (DatabaseConnectionError, StreamSettingsError) as error:
                    await self._pause(error)  # a stream not created yet may come
                else:
                    if self._status.state == "paused":
                        logger.info("consumer %r resumed", self.durable)
                    self._status.state, self._status.error = "running", None
        except Exception as error:
            self._status.state, self._status.error = "failed", repr(error)
            raise
        finally:
            await self._unsubscribe()
        self._status.state = "stopped"

    async def run_once(self) -> int:
        """Fetch one batch (waiting up to ``fetch_timeout`` for it), apply it and
        acknowledge it; return how many messages it settled (0: none came). Raise
        BrokerUnavailableError while NATS is unreachable, StreamSettingsError when the
        stream does not exist."""
        subscription = await self._subscribe()
        try:
            if not self.client.is_connected:
                raise nats.errors.ConnectionReconnectingError
            messages = await subscription.fetch(self.batch_size, timeout=self.fetch_timeout)
        except nats.errors.TimeoutError as error:
            if self.client.is_connected:
                return 0  # nothing new
            msg = f"NATS unreachable (reconnecting): {error!r}"
            raise BrokerUnavailableError(msg) from error
        except (*NETWORK_ERRORS, nats.errors.Error) as error:
            msg = f"cannot fetch from JetStream consumer {self.durable!r}: {error!r}"
            raise BrokerUnavailableError(msg) from error
        await self._apply(messages)
        return len(messages)

    async def _subscribe(self) -> JetStreamContext.PullSubscription:
        if self._subscription is not None:
            return self._subscription
        js = self.client.jetstream()
        config = ConsumerConfig(
            durable_name=self.durable,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait,
            deliver_policy=DeliverPolicy.ALL,
            max_deliver=-1,
            max_ack_pending=self.batch_size,
            filter_subject=self.filter_subject,
        )
        try:
            subscription = await js.pull_subscribe(
                self.filter_subject, durable=self.durable, stream=self.stream, config=config
            )
            info = await subscription.consumer_info()
        except nats.js.errors.NotFoundError as error:
            msg = f"JetStream stream {self.stream!r} does not exist: create it with ensure_stream()"
            raise StreamSettingsError(msg) from error
        except (*NETWORK_ERRORS, nats.errors.Error) as error:
            msg = f"cannot open JetStream consumer {self.durable!r} on {self.stream!r}: {error!r}"
            raise BrokerUnavailableError(msg) from error
        if info.num_ack_pending:
            # A consumer that died left these unacknowledged: let JetStream hand them over
            # again before anything newer, so an aggregate's events keep their order.
            logger.info(
                "consumer %r: %d message(s) unacknowledged by a previous run; waiting %g s "
                "for their redelivery",
                self.durable,
                info.num_ack_pending,
                self.ack_wait,
            )
            await asyncio.sleep(self.ack_wait)
        self._subscription = subscription
        return subscription

    async def _unsubscribe(self) -> None:
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()

    async def _apply(self, messages: list[Msg]) -> None:
        batch: set[str] = set()  # an id twice in one batch: the second is a duplicate
        events: list[tuple[Msg, EventEnvelope[Any] | Exception | None]] = [
            (message, self._decode(message, batch)) for message in messages
        ]
        wanted = [(m, e) for m, e in events if isinstance(e, EventEnvelope)]
        if len(wanted) == len([e for _, e in events if e is not None]):
            try:
                if wanted:
                    await self.projection.handle([e for _, e in wanted])
            except DatabaseConnectionError:
                await self._nak([m for m, _ in events])
                raise
            except Exception:  # noqa: BLE001 - isolated one by one below
                logger.debug("consumer %r: batch failed; one by one", self.durable)
            else:
                await self._ack([m for m, _ in events], applied=len(wanted))
                return
        for index, (message, event) in enumerate(events):
            error = await self._try(event)
            if error is None:
                await self._ack([message], applied=int(event is not None))
                continue
            if isinstance(error, DatabaseConnectionError):
                await self._nak([m for m, _ in events[index:]])
                raise error
            if await self._dead_letter(message, error):
                continue
            logger.warning(
                "consumer %r failed on event %s (delivery %d): %r",
                self.durable,
                (message.headers or {}).get("Nats-Msg-Id"),
                message.metadata.num_delivered,
                error,
            )
            await self._nak([m for m, _ in events[index:]])
            self._failures += 1
            await self._sleep(min(5.0, self.retry_delay * 2 ** min(self._failures, 10)))
            return
        self._failures = 0

    def _decode(self, message: Msg, batch: set[str]) -> EventEnvelope[Any] | Exception | None:
        """The message's event, None to acknowledge it unhandled (a duplicate of an event
        acknowledged before or earlier in ``batch``, or not for the projection), or the
        decoding error."""
        headers = message.headers or {}
        event_id = headers.get("Nats-Msg-Id", "")
        if event_id in self._acked or event_id in batch:
            return None
        if event_id:
            batch.add(event_id)
        try:
            row = serialized_event(message.data, headers)
        except Exception as error:  # noqa: BLE001 - dead-lettered like a failing handler
            return error
        types = self.projection.event_types
        decoder = self._decoders.get(row.aggregate_type)
        if decoder is None or (types is not None and row.event_type not in types):
            return None
        try:
            return decoder.decode(row)
        except Exception as error:  # noqa: BLE001 - as above
            return error

    async def _try(self, event: EventEnvelope[Any] | Exception | None) -> Exception | None:
        if event is None:
            return None
        if isinstance(event, Exception):
            return event
        try:
            await self.projection.handle([event])
        except Exception as error:  # noqa: BLE001 - the failure policy decides
            return error
        return None

    async def _ack(self, messages: list[Msg], *, applied: int) -> None:
        try:
            for message in messages:
                await message.ack()
            await self.client.flush(timeout=max(1, int(self.ack_wait / 2)))
        except (*NETWORK_ERRORS, nats.errors.Error) as error:
            msg = f"acknowledgements of consumer {self.durable!r} were not sent: {error!r}"
            raise BrokerUnavailableError(msg) from error
        for message in messages:
            event_id = (message.headers or {}).get("Nats-Msg-Id")
            if event_id:
                self._acked[event_id] = None
        while len(self._acked) > _REMEMBERED:
            self._acked.popitem(last=False)
        self._status.applied += applied
        self._status.ignored += len(messages) - applied

    async def _nak(self, messages: list[Msg]) -> None:
        with contextlib.suppress(*NETWORK_ERRORS, nats.errors.Error):
            for message in messages:
                await message.nak()
        self._status.retried += len(messages)

    async def _dead_letter(self, message: Msg, error: Exception) -> bool:
        """Set the message aside if it failed often enough and a dead-letter subject is
        set; return whether it was."""
        subject = self.dead_letter_subject
        if subject is None or message.metadata.num_delivered < self.dead_letter_after:
            return False
        headers = {**(message.headers or {}), "Cqrs-Error": repr(error)[:1000]}
        headers["Cqrs-Error"] = headers["Cqrs-Error"].replace("\r", " ").replace("\n", " ")
        # Its own id: the original's would be dropped as a duplicate of nothing, or of it.
        headers["Nats-Msg-Id"] = f"dead:{headers.get('Nats-Msg-Id', '')}"
        try:
            await self.client.jetstream().publish(subject, message.data, headers=headers)
            await message.term()
        except (*NETWORK_ERRORS, nats.errors.Error) as problem:
            logger.error(  # noqa: TRY400 - the failure is reported, not a traceback
                "consumer %r could not dead-letter an event to %r: %r",
                self.durable,
                subject,
                problem,
            )
            return False
        logger.error(
            "consumer %r dead-lettered event %s to %r after %d deliveries: %r",
            self.durable,
            (message.headers or {}).get("Nats-Msg-Id"),
            subject,
            message.metadata.num_delivered,
            error,
        )
        self._status.dead_lettered += 1
        return True

    async def _pause(self, error: Exception) -> None:
        if self._status.state != "paused":
            logger.warning("consumer %r paused: %s", self.durable, error)
        self._status.state, self._status.error = "paused", str(error)
        self._failures += 1
        await self._sleep(min(5.0, self.retry_delay * 2 ** min(self._failures, 10)))

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
