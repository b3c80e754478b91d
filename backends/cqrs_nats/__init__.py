"""Integration events on NATS JetStream: the event store is the outbox.

:class:`JetStreamPublisher` is a projection (run it with a :class:`~cqrs.ProjectionRunner`)
that publishes each committed event, or an integration event mapped from it, to
``<prefix>.<aggregate_type>.<aggregate_id>`` exactly once and in per-aggregate order;
:func:`ensure_stream` creates or checks the stream; :class:`JetStreamConsumer` feeds a
projection in another service from a durable JetStream consumer. Needs ``nats-py``
(``pip install 'cqrs-es[nats]'``).
"""

from cqrs_nats.consumer import ConsumerStatus, JetStreamConsumer
from cqrs_nats.messages import HEADERS, IntegrationEvent, serialized_event
from cqrs_nats.publisher import JetStreamPublisher, Mapper, PublisherStatus, PublishRefusedError
from cqrs_nats.streams import (
    DEFAULT_DUPLICATE_WINDOW,
    BrokerUnavailableError,
    JetStreamUnavailableError,
    StreamSettingsError,
    check_stream,
    connect_nats,
    ensure_stream,
)
from cqrs_nats.subjects import escape_token, subject_for, unescape_token

__all__ = [
    "DEFAULT_DUPLICATE_WINDOW",
    "HEADERS",
    "BrokerUnavailableError",
    "ConsumerStatus",
    "IntegrationEvent",
    "JetStreamConsumer",
    "JetStreamPublisher",
    "JetStreamUnavailableError",
    "Mapper",
    "PublishRefusedError",
    "PublisherStatus",
    "StreamSettingsError",
    "check_stream",
    "connect_nats",
    "ensure_stream",
    "escape_token",
    "serialized_event",
    "subject_for",
    "unescape_token",
]
