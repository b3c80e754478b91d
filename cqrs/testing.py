"""Given/when/then tests for aggregates, with no store involved."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from cqrs.aggregate import Aggregate
from cqrs.errors import CqrsError

__all__ = ["AggregateResultValidator", "AggregateTestExecutor", "TestFramework"]

A = TypeVar("A", bound=Aggregate[Any, Any, Any])  # Any: the framework accepts any aggregate


class TestFramework(Generic[A]):
    """Tests an aggregate's decisions: ``given`` events, ``when`` a command, ``then`` expect.

    ::

        result = await TestFramework(BankAccount, services).given([opened]).when(deposit)
        result.then_expect_events([deposited])

    ``aggregate_id`` is the id the aggregate sees while handling. ``TestFramework[A]`` tests
    aggregate class ``A`` (inferred from the class passed in): ``then_expect_state`` and
    ``AggregateResultValidator.aggregate`` see an ``A``. Commands and events are taken as
    ``object`` so that a test can also feed what the types would refuse.
    """

    __test__ = False  # not a pytest test class

    def __init__(
        self, aggregate_class: type[A], services: object = None, *, aggregate_id: str = "test-id"
    ) -> None:
        self.aggregate_class = aggregate_class
        self.services = services
        self.aggregate_id = aggregate_id

    def given_no_previous_events(self) -> AggregateTestExecutor[A]:
        """Start from a new aggregate."""
        return self.given([])

    def given(self, events: Sequence[object]) -> AggregateTestExecutor[A]:
        """Start from the state these events produce."""
        aggregate = self.aggregate_class()
        aggregate.aggregate_id = self.aggregate_id
        executor = AggregateTestExecutor(aggregate, self.services)
        return executor.and_(events)


class AggregateTestExecutor(Generic[A]):
    """The "given" stage: add more events with :meth:`and_`, then run :meth:`when`."""

    def __init__(self, aggregate: A, services: object) -> None:
        self.aggregate = aggregate
        self.services = services

    def and_(self, events: Sequence[object]) -> AggregateTestExecutor[A]:
        """Apply more prior events."""
        for event in events:
            self.aggregate.apply(event)
        return self

    async def when(self, command: object) -> AggregateResultValidator[A]:
        """Run the handler. A declared user error (one of the aggregate's ``user_errors``,
        by default :class:`~cqrs.errors.DomainError`) is captured for ``then_expect_error``,
        as the framework would raise it wrapped in UserError; any other exception propagates
        unwrapped (it is a bug, not a refusal: the framework raises UnexpectedError)."""
        aggregate = self.aggregate
        try:
            events = list(await aggregate.handle(command, self.services))
        except CqrsError:
            raise  # the framework never counts its own errors as the user's refusal
        except aggregate.user_errors as error:
            return AggregateResultValidator(aggregate, error)
        for event in events:
            aggregate.apply(event)
        return AggregateResultValidator(aggregate, events)


class AggregateResultValidator(Generic[A]):
    """The "then" stage: assertions on the handler's result and the resulting state."""

    def __init__(self, aggregate: A, result: list[object] | Exception) -> None:
        self.aggregate = aggregate
        self._result = result

    def inspect_result(self) -> list[object] | Exception:
        """The events produced, or the error raised."""
        return self._result

    def _events(self) -> list[object]:
        if isinstance(self._result, Exception):
            msg = f"expected events, but the handler raised {self._result!r}"
            raise AssertionError(msg) from self._result  # noqa: TRY004 - a test assertion
        return self._result

    def _error(self) -> Exception:
        if not isinstance(self._result, Exception):
            msg = f"expected an error, but the handler returned {self._result!r}"
            raise AssertionError(msg)  # noqa: TRY004 - a test assertion
        return self._result

    def then_expect_events(self, expected: Sequence[object]) -> None:
        """Assert the handler returned exactly these events (by equality, in order)."""
        actual = self._events()
        if actual != list(expected):
            msg = f"expected events {list(expected)!r}, got {actual!r}"
            raise AssertionError(msg)

    def then_expect_events_matching(
        self, matchers: Sequence[type[object] | Callable[[Any], bool]]
    ) -> None:
        """Assert one event per matcher, in order: a matcher is an event class (isinstance)
        or a predicate returning True."""
        actual = self._events()
        if len(actual) != len(matchers):
            msg = f"expected {len(matchers)} event(s), got {len(actual)}: {actual!r}"
            raise AssertionError(msg)
        for index, (event, matcher) in enumerate(zip(actual, matchers, strict=True)):
            ok = isinstance(event, matcher) if isinstance(matcher, type) else matcher(event)
            if not ok:
                msg = f"event {index} {event!r} does not match {matcher!r}"
                raise AssertionError(msg)

    def then_expect_error(self, expected: type[Exception] | Exception) -> None:
        """Assert the handler raised: an instance of the class, or an error of the same class
        and message as the given instance."""
        error = self._error()
        if isinstance(expected, type):
            ok = isinstance(error, expected)
        else:
            ok = type(error) is type(expected) and str(error) == str(expected)
        if not ok:
            msg = f"expected error {expected!r}, got {error!r}"
            raise AssertionError(msg)

    def then_expect_error_message(self, message: str) -> None:
        """Assert the handler raised an error whose message is exactly ``message``."""
        error = self._error()
        if str(error) != message:
            msg = f"expected error message {message!r}, got {str(error)!r}"
            raise AssertionError(msg)

    def then_expect_state(self, check: Callable[[A], bool]) -> None:
        """Assert ``check`` holds for the aggregate after applying the produced events."""
        if not check(self.aggregate):
            msg = f"state check {check!r} failed for {self.aggregate!r}"
            raise AssertionError(msg)
