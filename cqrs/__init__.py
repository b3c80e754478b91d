"""cqrs-es for Python: async CQRS and event sourcing with pluggable storage.

Write aggregates, commands and events; :class:`CqrsFramework` loads the aggregate, runs the
command handler, commits the events with optimistic concurrency and feeds the queries.
Storage is any :class:`PersistedEventRepository`; :func:`connect` opens one from a URL.
``__version__`` is the installed distribution's version (``"0+unknown"`` when the package
is imported from a source tree that was never installed).
"""

import importlib.metadata as _metadata

from cqrs.aggregate import Aggregate, AggregateClass
from cqrs.checkpoints import (
    CheckpointStore,
    Lease,
    MemoryCheckpoints,
    ParkedEvent,
    ViewCheckpointStore,
    ViewWrite,
)
from cqrs.codec import Codec, MsgspecCodec, default_codec
from cqrs.connection import connect, redact_url
from cqrs.errors import (
    AggregateConflict,
    AggregateError,
    ConfigurationError,
    CqrsError,
    DatabaseConnectionError,
    DeserializationError,
    DomainError,
    LeaseLost,
    NotOpenError,
    UnexpectedError,
    UserError,
)
from cqrs.events import DomainEvent, EventEnvelope, event_type_of, event_version_of
from cqrs.factories import new_framework
from cqrs.framework import CqrsFramework, QueryFailure, Retry
from cqrs.projection import (
    EventDecoder,
    Projection,
    ProjectionFailedError,
    ProjectionRunner,
    ProjectionStatus,
    TransactionalProjection,
    ViewProjection,
)
from cqrs.query import EventSource, GenericQuery, Query, QueryReplay, View
from cqrs.rebuild import SwitchableViews
from cqrs.repository import (
    AsyncResource,
    BaseViewRepository,
    PersistedEventRepository,
    SerializedEvent,
    SerializedSnapshot,
    ViewContext,
    ViewRepository,
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
from cqrs.store import AggregateContext, EventStore, PersistedEventStore
from cqrs.subscription import LocalSignal, SharedWakeUps, Subscription, WakeUps, WakeUpSource
from cqrs.tagged import TaggedCodec
from cqrs.testing import AggregateResultValidator, AggregateTestExecutor, TestFramework
from cqrs.upcasting import EventUpcaster, RawEvent, SemanticVersionEventUpcaster

try:
    __version__ = _metadata.version("cqrs-es")
except _metadata.PackageNotFoundError:  # imported from a source tree, not installed
    __version__ = "0+unknown"

__all__ = [
    "Aggregate",
    "AggregateClass",
    "AggregateConflict",
    "AggregateContext",
    "AggregateError",
    "AggregateResultValidator",
    "AggregateTestExecutor",
    "AsyncResource",
    "BaseViewRepository",
    "CheckpointStore",
    "Codec",
    "ConfigurationError",
    "CqrsError",
    "CqrsFramework",
    "DatabaseConnectionError",
    "DeserializationError",
    "DomainError",
    "DomainEvent",
    "EventDecoder",
    "EventEnvelope",
    "EventSource",
    "EventStore",
    "EventUpcaster",
    "GenericQuery",
    "Lease",
    "LeaseLost",
    "LocalSignal",
    "MemoryCheckpoints",
    "MsgspecCodec",
    "NotOpenError",
    "ParkedEvent",
    "PersistedEventRepository",
    "PersistedEventStore",
    "Projection",
    "ProjectionFailedError",
    "ProjectionRunner",
    "ProjectionStatus",
    "Query",
    "QueryFailure",
    "QueryReplay",
    "RawEvent",
    "Retry",
    "SemanticVersionEventUpcaster",
    "SerializedEvent",
    "SerializedSnapshot",
    "SharedWakeUps",
    "Subscription",
    "SwitchableViews",
    "TaggedCodec",
    "TestFramework",
    "TransactionalProjection",
    "UnexpectedError",
    "UserError",
    "View",
    "ViewCheckpointStore",
    "ViewContext",
    "ViewProjection",
    "ViewRepository",
    "ViewWrite",
    "WakeUpSource",
    "WakeUps",
    "check_batch",
    "check_ids",
    "check_page_size",
    "connect",
    "decode_view",
    "default_codec",
    "event_type_of",
    "event_version_of",
    "new_framework",
    "next_view_version",
    "not_open",
    "read_pages",
    "redact_url",
    "stored_positions",
    "validate_identifier",
]
