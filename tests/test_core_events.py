"""Event names and versions: what a class is stored as, with or without DomainEvent."""

from __future__ import annotations

from dataclasses import dataclass

import msgspec
import pydantic

from cqrs import DomainEvent, event_type_of, event_version_of


@dataclass(frozen=True)
class PlainEvent:
    amount: int


class Renamed(DomainEvent):
    event_type = "renamed-event"
    event_version = "2.1"


class StructEvent(msgspec.Struct, frozen=True):
    # Fields that share the attribute names are data, not the class's name and version.
    event_type: str
    event_version: str


class PydanticEvent(pydantic.BaseModel):
    note: str


class NamedPlain:
    event_type = "plain-name"
    event_version = "0.9"


def test_a_class_that_declares_nothing_is_stored_under_its_name_at_one_dot_zero():
    assert event_type_of(PlainEvent) == "PlainEvent"
    assert event_version_of(PlainEvent) == "1.0"
    assert event_type_of(PydanticEvent) == "PydanticEvent"
    assert event_version_of(PydanticEvent) == "1.0"


def test_declared_names_and_versions_are_used_with_or_without_domain_event():
    assert (event_type_of(Renamed), event_version_of(Renamed)) == ("renamed-event", "2.1")
    assert (event_type_of(NamedPlain), event_version_of(NamedPlain)) == ("plain-name", "0.9")


def test_fields_named_like_the_attributes_do_not_count():
    assert event_type_of(StructEvent) == "StructEvent"
    assert event_version_of(StructEvent) == "1.0"


def test_subclasses_of_domain_event_get_their_own_name_but_inherit_the_version():
    class Child(Renamed):
        pass

    assert event_type_of(Child) == "Child"
    assert event_version_of(Child) == "2.1"


def test_domain_event_sets_the_class_attribute_unless_the_class_declares_one():
    class Opened(DomainEvent):
        pass

    class Closed(DomainEvent):
        event_type = "account-closed"

    class Reopened(Closed):
        pass

    assert (Opened.event_type, Opened.event_version) == ("Opened", "1.0")
    assert Closed.event_type == "account-closed"
    assert Reopened.event_type == "Reopened"
