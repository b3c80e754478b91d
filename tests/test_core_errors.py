"""cqrs.errors: what a refused command carries, and which errors a caller can catch together."""

from __future__ import annotations

import pytest

from cqrs import (
    AggregateConflict,
    AggregateError,
    ConfigurationError,
    CqrsError,
    DomainError,
    NotOpenError,
    UserError,
)


def test_a_user_error_carries_the_handlers_error_and_its_message():
    refused = DomainError("insufficient funds")
    error = UserError(refused)
    assert str(error) == "insufficient funds"
    assert error.args == ("insufficient funds",)
    assert error.error is refused
    assert isinstance(error, AggregateError)
    assert isinstance(error, CqrsError)


def test_a_user_error_shows_the_message_of_any_exception():
    error = UserError(KeyError("account"))
    assert str(error) == "'account'"  # str() of a KeyError quotes its key
    assert isinstance(error.error, KeyError)


@pytest.mark.parametrize("error", [ConfigurationError("x"), NotOpenError("x")])
def test_configuration_errors_are_value_errors_too(error):
    assert isinstance(error, ValueError)
    assert isinstance(error, CqrsError)


def test_a_conflict_is_an_aggregate_error_but_not_a_user_error():
    assert isinstance(AggregateConflict("x"), AggregateError)
    assert not isinstance(AggregateConflict("x"), UserError)
