"""The aggregate: the consistency boundary that decides on commands and applies events."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Sequence
from typing import ClassVar, Generic, Protocol, TypeVar

from cqrs.errors import DomainError

__all__ = ["Aggregate", "AggregateClass"]

C = TypeVar("C")
E = TypeVar("E")
S = TypeVar("S")
A = TypeVar("A")
C_contra = TypeVar("C_contra", contravariant=True)
E_contra = TypeVar("E_contra", contravariant=True)
S_contra = TypeVar("S_contra", contravariant=True)


class Aggregate(ABC, Generic[C, E, S]):
    """Base class of aggregates, generic over command, event and services types.

    Contract:

    - ``aggregate_type`` (class attribute) names the stream; it is stored with every event.
    - ``event_classes`` (class attribute) lists every event class the aggregate emits. Stored
      events are decoded to these classes by their ``event_type``; there is no global registry.
    - ``Aggregate()`` (no arguments) is the empty state of a new aggregate.
    - :meth:`handle` decides: it reads the state, may await services, and returns the events
      to commit (possibly none). It must not change state. To refuse a command it raises one
      of ``user_errors`` (by default :class:`~cqrs.errors.DomainError` and its subclasses);
      the framework wraps that in :class:`~cqrs.errors.UserError`. Anything else it raises
      is a bug: :class:`~cqrs.errors.UnexpectedError`.
    - :meth:`apply` changes state from one event, with no logic that can fail.
    - ``aggregate_id`` is set by the framework before any event is applied or any command
      handled, so the handler can learn which aggregate it is deciding for.

    For snapshots and the aggregate-store mode the aggregate itself must be encodable by the
    codec (a dataclass or ``msgspec.Struct`` whose fields are encodable). A snapshot is stored
    with a fingerprint of the state's schema (see ``snapshot_schema``) and is used only by a
    class with the same fingerprint; otherwise the state is rebuilt from the events.
    """

    aggregate_type: ClassVar[str]
    event_classes: ClassVar[Sequence[type[object]]]
    user_errors: ClassVar[tuple[type[Exception], ...]] = (DomainError,)
    """The exception classes (and their subclasses) by which :meth:`handle` refuses a
    command: raised as UserError. Any other exception becomes UnexpectedError. Set it to
    declare classes that do not derive from DomainError; it replaces the default, so list
    DomainError too if the handler also raises it."""

    snapshot_schema: ClassVar[str | None] = None
    """The snapshot format, for aggregates that migrate their snapshots themselves.

    None (the default): the store fingerprints the state's schema (field names, types,
    defaults; see :func:`cqrs.codec.schema_fingerprint`), so a snapshot written before a
    field was renamed, removed, added or changed type is never used: the state is replayed
    from the events and the next commit writes a fresh snapshot. A string replaces that
    check: snapshots are used when written under the same string. Change it whenever old
    snapshots would decode into a wrong state."""

    aggregate_id: str = ""

    @abstractmethod
    async def handle(self, command: C, services: S) -> Sequence[E]:
        """Decide on ``command`` and return the events to commit, or raise a user error."""

    @abstractmethod
    def apply(self, event: E) -> None:
        """Change the state by one event."""


class AggregateClass(Protocol[A, C_contra, E_contra, S_contra]):
    """The type of an aggregate class itself, as the store and the factories take it.

    ``PersistedEventStore(repository, BankAccount)`` matches ``BankAccount`` (the class
    object) against this protocol, which binds four type parameters at once, so a typed
    program needs no cast:

    - ``A``: the instances, what ``BankAccount()`` returns. Loading gives back this class,
      so ``(await store.load_aggregate(id)).aggregate.balance`` type-checks.
    - ``C`` and ``S``: the command and services types ``handle`` accepts.
    - ``E``: the event type ``apply`` accepts. It is read from ``apply``, not from what
      ``handle`` returns: a handler annotated ``-> list[Deposited]`` in an
      ``Aggregate[Cmd, Deposited | Withdrawn, Svc]`` still gives ``E = Deposited | Withdrawn``.

    For a subclass of ``Aggregate[C, E, S]`` whose ``handle`` and ``apply`` keep the base's
    parameter types (as usual), these are the base's ``C``, ``E`` and ``S``. One that widens
    them (``apply(self, event: object)``) widens the store's parameters too, and
    ``CqrsFramework(store)`` can then no longer infer its own: keep the base's types.

    The class literal, or a value typed ``type[BankAccount]`` or
    ``type[Aggregate[C, E, S]]``, matches. A value typed ``type[Any]``, ``type`` or
    ``type[T]`` for a type variable ``T`` does not (mypy infers no instance type from
    those): a function generic over aggregate classes takes an ``AggregateClass[A, C, E,
    S]`` itself.

    Only the static types are checked here; at run time the store checks the class's
    ``aggregate_type`` and ``event_classes`` and raises ConfigurationError.
    """

    def __call__(self) -> A:
        """The empty state of a new aggregate."""
        ...

    # Read on the class, the methods are unbound: the instance comes first, which binds ``A``
    # when the class is a value typed ``type[...]`` (mypy reads no ``__call__`` from those).

    def handle(
        self, aggregate: A, command: C_contra, services: S_contra, /
    ) -> Awaitable[Sequence[object]]:
        """``Aggregate.handle`` as seen on the class: binds ``C`` and ``S``."""
        ...

    def apply(self, aggregate: A, event: E_contra, /) -> None:
        """``Aggregate.apply`` as seen on the class: binds ``E``."""
        ...
