"""Event payloads in serde's externally tagged enum shape, to share streams with cqrs-es.

cqrs-es (Rust) keeps an aggregate's events as one enum and stores each payload the way
serde writes an externally tagged enum: the variant's name as the one key of an object
around the variant's fields, ``{"CustomerDepositedMoney": {"amount": "10", "balance":
"10"}}``, or the bare name for a variant without fields, ``"AccountClosed"``. A
:class:`TaggedCodec` reads and writes that shape for the event classes it is given, so a
Python aggregate loads and extends a stream a Rust service wrote, and a Rust service loads
what Python wrote. Every other value (snapshots' state, views, metadata) is left as the
inner codec writes it, as cqrs-es does.

    codec = TaggedCodec.for_aggregate(BankAccount)
    store = PersistedEventStore(repository, BankAccount, codec=codec)

A class's tag is its ``event_type`` (what cqrs-es's ``event_type()`` usually returns: the
variant's name), unless ``tags`` names another one. A class without fields is a unit
variant: written as the bare tag, read from the bare tag or ``{"Tag": {}}``/``{"Tag": null}``.
Upcasters see the tagged form (as cqrs-es's do) and hand it back tagged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

import msgspec

from cqrs.codec import Codec, default_codec
from cqrs.errors import ConfigurationError
from cqrs.events import event_type_of

__all__ = ["TaggedCodec"]

T = TypeVar("T")

_TAGGED = msgspec.json.Decoder(dict[str, msgspec.Raw] | str)


def _has_fields(cls: type[object]) -> bool:
    if dataclasses.is_dataclass(cls):
        return bool(dataclasses.fields(cls))
    struct_fields = getattr(cls, "__struct_fields__", None)
    if struct_fields is not None:
        return bool(struct_fields)
    model_fields = getattr(cls, "model_fields", None)
    if isinstance(model_fields, Mapping):
        return bool(model_fields)
    return True


class TaggedCodec:
    """A :class:`~cqrs.codec.Codec` that writes instances of ``event_classes`` as serde's
    externally tagged enum variants and reads them back (see the module docstring), and
    passes every other value through ``inner`` (the default codec unless given).

    ``tags`` maps a class to its tag where it is not the class's ``event_type``. Two classes
    with one tag, or a tag that is not a non-empty string, are a ConfigurationError.
    Decoding raises ValueError (the store turns it into a DeserializationError naming the
    event) for a payload that is not tagged, or is tagged for another variant.
    """

    def __init__(
        self,
        event_classes: Iterable[type[object]],
        *,
        tags: Mapping[type[object], str] | None = None,
        inner: Codec = default_codec,
    ) -> None:
        self.inner = inner
        self.tags: dict[type[object], str] = {}
        owners: dict[str, type[object]] = {}
        chosen = dict(tags or {})
        for cls in event_classes:
            tag = chosen.pop(cls) if cls in chosen else event_type_of(cls)
            if not isinstance(tag, str) or not tag:
                msg = f"the tag of {cls.__qualname__} must be a non-empty string, not {tag!r}"
                raise ConfigurationError(msg)
            if owners.setdefault(tag, cls) is not cls:
                msg = f"{owners[tag].__qualname__} and {cls.__qualname__} are both tagged {tag!r}"
                raise ConfigurationError(msg)
            self.tags[cls] = tag
        if chosen:
            names = ", ".join(sorted(cls.__qualname__ for cls in chosen))
            msg = f"tags name classes that are not among the event classes: {names}"
            raise ConfigurationError(msg)
        self._units = frozenset(cls for cls in self.tags if not _has_fields(cls))
        self._prefixes = {
            cls: b"{" + msgspec.json.encode(tag) + b":" for cls, tag in self.tags.items()
        }
        self._bare = {cls: msgspec.json.encode(tag) for cls, tag in self.tags.items()}

    @classmethod
    def for_aggregate(
        cls,
        aggregate_class: type[object],
        *,
        tags: Mapping[type[object], str] | None = None,
        inner: Codec = default_codec,
    ) -> TaggedCodec:
        """A codec tagging the events of ``aggregate_class`` (its ``event_classes``)."""
        classes = getattr(aggregate_class, "event_classes", None)
        if not classes:
            msg = f"{aggregate_class.__qualname__}.event_classes must list its event classes"
            raise ConfigurationError(msg)
        return cls(classes, tags=tags, inner=inner)

    def encode(self, value: object) -> bytes:
        """An event as ``{"Tag": fields}`` (a unit variant as ``"Tag"``); anything else as
        the inner codec encodes it."""
        kind = type(value)
        prefix = self._prefixes.get(kind)
        if prefix is None:
            return self.inner.encode(value)
        if kind in self._units:
            return self._bare[kind]
        return prefix + self.inner.encode(value) + b"}"

    def decode(self, data: bytes | str, type_: type[T]) -> T:
        """An event class's instance from its tagged form; anything else as the inner codec
        decodes it."""
        tag = self.tags.get(type_)
        if tag is None:
            return self.inner.decode(data, type_)
        try:
            tagged = _TAGGED.decode(data)
        except msgspec.ValidationError as error:
            msg = f"expected a variant tagged {tag!r} (an object with one key, or a string)"
            raise ValueError(msg) from error
        if isinstance(tagged, str):
            self._check(tag, [tagged], type_)
            return self.inner.convert({}, type_)
        self._check(tag, list(tagged), type_)
        body = bytes(tagged[tag])
        if type_ in self._units and body in {b"{}", b"null"}:
            return self.inner.convert({}, type_)
        return self.inner.decode(body, type_)

    def decode_untyped(self, data: bytes | str) -> object:
        """Plain Python values, tags included (what upcasters see)."""
        return self.inner.decode_untyped(data)

    def convert(self, value: object, type_: type[T]) -> T:
        """An event class's instance from its tagged form in plain values (an upcaster's
        result); anything else as the inner codec converts it."""
        tag = self.tags.get(type_)
        if tag is None:
            return self.inner.convert(value, type_)
        if isinstance(value, str):
            self._check(tag, [value], type_)
            return self.inner.convert({}, type_)
        if not isinstance(value, Mapping):
            msg = f"expected a variant tagged {tag!r}, not {type(value).__name__}"
            raise TypeError(msg)
        mapping: Mapping[str, Any] = value
        self._check(tag, list(mapping), type_)
        body = mapping[tag]
        return self.inner.convert({} if body is None and type_ in self._units else body, type_)

    def decode_metadata(self, data: bytes | str) -> dict[str, str]:
        """Metadata, as the inner codec decodes it (never tagged)."""
        return self.inner.decode_metadata(data)

    @staticmethod
    def _check(tag: str, found: list[str], type_: type[object]) -> None:
        if found != [tag]:
            shown = ", ".join(repr(key) for key in found) or "nothing"
            msg = f"expected a variant tagged {tag!r} for {type_.__qualname__}, found {shown}"
            raise ValueError(msg)
