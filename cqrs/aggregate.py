"""The aggregate: the consistency boundary that decides on commands and applies events."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar, Generic, Protocol, Self, TypeVar

from cqrs.errors import DomainError

__all__ = ["Aggregate", "AggregateClass"]

C = TypeVar("C")
E = TypeVar("E")
S = TypeVar("S")
A_co = TypeVar("A_co", covariant=True)
C_co = TypeVar("C_co", covariant=True)
E_co = TypeVar("E_co", covariant=True)
S_co = TypeVar("S_co", covariant=True)


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

    if TYPE_CHECKING:
        # For the type checker only; no such method exists at run time. It states this
        # class's own type and its base's C, E and S, which is what AggregateClass reads.
        @classmethod
        def _aggregate_signature(cls) -> tuple[Self, C, E, S]: ...

    @abstractmethod
    async def handle(self, command: C, services: S) -> Sequence[E]:
        """Decide on ``command`` and return the events to commit, or raise a user error."""

    @abstractmethod
    def apply(self, event: E) -> None:
        """Change the state by one event."""


class AggregateClass(Protocol[A_co, C_co, E_co, S_co]):
    """The type of an aggregate class itself, as the store and the factories take it.

    ``PersistedEventStore(repository, BankAccount)`` matches ``BankAccount`` (the class
    object, not an instance) against this protocol, which binds four type parameters at
    once, so a typed program needs no cast:

    - ``A``: the class's instances. Loading gives back this class, so
      ``(await store.load_aggregate(id)).aggregate.balance`` type-checks.
    - ``C``, ``E``, ``S``: the command, event and services types of the ``Aggregate[C, E,
      S]`` it derives from, exactly as written there (whatever ``handle`` and ``apply``
      declare: a handler annotated ``-> list[Deposited]`` in an ``Aggregate[Cmd, Deposited
      | Withdrawn, Svc]`` still gives ``E = Deposited | Withdrawn``).

    A concrete subclass of :class:`Aggregate` that can be made with no arguments matches,
    given as the class itself or as a value typed ``type[BankAccount]`` or ``type[Aggregate[C,
    E, S]]``. A value typed ``type[Any]``, ``type`` or ``type[T]`` (for a type variable
    ``T``) does not: mypy infers nothing from those. A function generic over aggregate
    classes takes an ``AggregateClass[A, C, E, S]``.

    Only the static types are checked here; at run time the store checks the class's
    ``aggregate_type`` and ``event_classes`` and raises ConfigurationError.
    """

    def __call__(self) -> A_co:
        """The empty state of a new aggregate."""
        ...

    def _aggregate_signature(self) -> tuple[A_co, C_co, E_co, S_co]:
        """What binds the parameters: ``Aggregate._aggregate_signature`` (static only)."""
        ...
