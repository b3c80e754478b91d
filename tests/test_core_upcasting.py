"""SemanticVersionEventUpcaster built in each test: what it rewrites, the version it stamps,
and the error naming the event type when its own version does not parse."""

from __future__ import annotations

import pytest

from cqrs import ConfigurationError, RawEvent, SemanticVersionEventUpcaster


def add_currency(payload: dict[str, object]) -> dict[str, object]:
    return {**payload, "currency": "EUR"}


def test_an_upcaster_rewrites_the_payload_and_stamps_its_version():
    upcaster = SemanticVersionEventUpcaster("Deposited", "2.0", add_currency)
    assert (upcaster.event_type, upcaster.event_version) == ("Deposited", "2.0")
    old = RawEvent("Deposited", "1.3", {"amount": "5"})
    assert upcaster.upcast(old) == RawEvent("Deposited", "2.0", {"amount": "5", "currency": "EUR"})
    assert old.payload == {"amount": "5"}
    assert repr(upcaster) == "SemanticVersionEventUpcaster('Deposited', '2.0')"


def test_an_upcaster_applies_to_its_event_type_below_its_version_only():
    upcaster = SemanticVersionEventUpcaster("Deposited", "2.0", add_currency)
    assert upcaster.can_upcast("Deposited", "1.9")
    assert upcaster.can_upcast("Deposited", "1.10")
    assert not upcaster.can_upcast("Deposited", "2")  # equal however written
    assert not upcaster.can_upcast("Deposited", "2.0.1")
    assert not upcaster.can_upcast("Withdrawn", "1.0")
    assert not upcaster.can_upcast("Deposited", "one")  # a stored version that does not parse


def test_an_upcaster_whose_version_does_not_parse_is_refused_naming_its_event_type():
    with pytest.raises(ConfigurationError) as raised:
        SemanticVersionEventUpcaster("Deposited", "v2", add_currency)
    assert str(raised.value) == (
        "upcaster for 'Deposited': invalid event version 'v2': expected dotted integers like '1.0'"
    )
    assert raised.value.__cause__ is None
