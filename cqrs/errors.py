"""The error tree, organized by what the caller must do.

::

    CqrsError                      anything this framework raises on purpose
    ├── AggregateError             raised while executing a command
    │   ├── UserError              the aggregate refused the command; show `.error` to the user
    │   ├── AggregateConflict      someone else committed first; reload and retry
    │   ├── DatabaseConnectionError  the database is unreachable; retry later
    │   ├── DeserializationError   stored data does not decode; fix the data or the upcasters
    │   └── UnexpectedError        anything else (a bug or a driver failure we do not classify)
    ├── LeaseLost                  another runner took over a projection; this one must stop
    └── ConfigurationError         bad setup: unknown URL scheme, missing extra, invalid name
        └── NotOpenError           a repository used before open() or after close()

    DomainError                    yours: raise it (or a subclass) in ``handle`` to refuse a
                                   command; the framework raises it wrapped in UserError

Every backend translates its driver's errors into this tree in exactly one function and raises
``from`` the driver error, so the original is always available as ``__cause__``.
"""

from __future__ import annotations

__all__ = [
    "AggregateConflict",
    "AggregateError",
    "ConfigurationError",
    "CqrsError",
    "DatabaseConnectionError",
    "DeserializationError",
    "DomainError",
    "LeaseLost",
    "NotOpenError",
    "UnexpectedError",
    "UserError",
]


class DomainError(Exception):
    """A rule of the domain refused a command; the message is for the user who sent it.

    Raise it, or a subclass, from :meth:`Aggregate.handle <cqrs.aggregate.Aggregate.handle>`:
    it is the default of ``Aggregate.user_errors``, so the framework reports it as
    :class:`UserError` and commits nothing. Any other exception from the handler is a bug
    and becomes :class:`UnexpectedError`, unless the aggregate lists its class in
    ``user_errors``. It is not a :class:`CqrsError`: it belongs to the user's domain.
    """


class CqrsError(Exception):
    """Base class of every error this framework raises on purpose."""


class AggregateError(CqrsError):
    """Base class of the errors raised while loading, executing or committing."""


class UserError(AggregateError):
    """The aggregate's command handler refused the command.

    ``error`` is the exception the handler raised (also available as ``__cause__``); its
    message is meant for the user who sent the command.
    """

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class AggregateConflict(AggregateError):
    """Another writer committed to the same aggregate first (or the expected version did not
    match). Nothing of this commit was stored; reload the aggregate and retry."""


class DatabaseConnectionError(AggregateError):
    """The database could not be reached or the connection broke. Nothing is known to be
    stored beyond what a retry's load shows; retrying later is safe."""


class DeserializationError(AggregateError):
    """Stored data could not be decoded. The message names the event (aggregate type, id,
    sequence, event type and version) or the snapshot or view that failed."""


class UnexpectedError(AggregateError):
    """An error the framework does not classify: a bug in user code outside the handler's
    declared errors, or a driver error with no better category."""


class LeaseLost(CqrsError):
    """A projection runner's lease was taken over by another runner (or the projection was
    reset), so its checkpoint write was refused: the runner stops running that projection.
    Nothing it wrote under the old lease moved the checkpoint."""


class ConfigurationError(CqrsError, ValueError):
    """The framework was set up wrongly: an unknown URL scheme, a missing optional
    dependency (the message names the extra to install), or an invalid table name."""


class NotOpenError(ConfigurationError):
    """A repository (or a view repository on it) was used before ``open()`` or after
    ``close()``. Every backend raises this one error, before any I/O; call
    ``await repository.open()`` or use ``async with repository``."""
