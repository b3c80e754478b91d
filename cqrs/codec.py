"""The codec: one fast JSON encoder/decoder for events, snapshots and views.

msgspec encodes and decodes dataclasses, ``msgspec.Struct``, ``Decimal`` (as a string, so it
stays exact), ``datetime``, ``UUID``, enums and nested combinations of them. Pydantic models
go through the same interface: they are recognized by their ``model_dump`` /
``model_validate_json`` methods, so pydantic is never imported here.

Decoders are built once per type and cached. :func:`schema_fingerprint` names the structure
a type encodes to, so that stored state written for another structure is recognized.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import msgspec

__all__ = ["Codec", "MsgspecCodec", "default_codec", "schema_fingerprint"]

T = TypeVar("T")


class Codec(Protocol):
    """Turns values into JSON bytes and back.

    ``encode`` raises ``TypeError`` for a value it cannot encode; ``decode`` and ``convert``
    raise ``ValueError`` (``msgspec.ValidationError`` / ``DecodeError`` or pydantic's
    ``ValidationError``) for data that does not fit the type.
    """

    def encode(self, value: object) -> bytes:
        """Encode a value as JSON bytes."""
        ...

    def decode(self, data: bytes | str, type_: type[T]) -> T:
        """Decode JSON into an instance of ``type_``."""
        ...

    def decode_untyped(self, data: bytes | str) -> object:
        """Decode JSON into plain Python values (dicts, lists, str, int, float...)."""
        ...

    def convert(self, value: object, type_: type[T]) -> T:
        """Build an instance of ``type_`` from plain Python values (used after upcasting)."""
        ...

    def decode_metadata(self, data: bytes | str) -> dict[str, str]:
        """Decode an event's metadata: a JSON object of strings."""
        ...


def _enc_hook(value: object) -> object:
    dump = getattr(value, "model_dump", None)
    if dump is not None:
        return dump(mode="json")
    msg = f"cannot encode an object of type {type(value).__qualname__}"
    raise TypeError(msg)


def _is_pydantic(type_: type[object]) -> bool:
    return hasattr(type_, "model_validate_json") and hasattr(type_, "model_validate")


class MsgspecCodec:
    """The default :class:`Codec`, built on msgspec (and pydantic for pydantic models)."""

    def __init__(self) -> None:
        self._encoder = msgspec.json.Encoder(enc_hook=_enc_hook, decimal_format="string")
        self._untyped = msgspec.json.Decoder()
        self._metadata = msgspec.json.Decoder(dict[str, str])
        self._decoders: dict[type[Any], Callable[[bytes | str], Any]] = {}
        self._converters: dict[type[Any], Callable[[object], Any]] = {}

    def encode(self, value: object) -> bytes:
        """Encode a value as compact JSON bytes; ``Decimal`` becomes a string."""
        return self._encoder.encode(value)

    def decode(self, data: bytes | str, type_: type[T]) -> T:
        """Decode JSON into ``type_`` in one pass."""
        decoder: Callable[[bytes | str], T] | None = self._decoders.get(type_)
        if decoder is None:
            decoder = self._decoder_for(type_)
        return decoder(data)

    def decode_untyped(self, data: bytes | str) -> object:
        """Decode JSON into plain Python values."""
        return self._untyped.decode(data)

    def decode_metadata(self, data: bytes | str) -> dict[str, str]:
        """Decode metadata: a JSON object of strings."""
        return self._metadata.decode(data)

    def convert(self, value: object, type_: type[T]) -> T:
        """Build ``type_`` from plain values, accepting the forms ``encode`` produces."""
        converter: Callable[[object], T] | None = self._converters.get(type_)
        if converter is None:
            if _is_pydantic(type_):
                converter = getattr(type_, "model_validate")  # noqa: B009 - duck-typed pydantic
            else:

                def converter(value: object, type_: type[T] = type_) -> T:
                    return msgspec.convert(value, type_, strict=False)

            self._converters[type_] = converter
        return converter(value)

    def _decoder_for(self, type_: type[T]) -> Callable[[bytes | str], T]:
        decoder: Callable[[bytes | str], T]
        if _is_pydantic(type_):
            decoder = getattr(type_, "model_validate_json")  # noqa: B009 - duck-typed pydantic
        else:
            decoder = msgspec.json.Decoder(type_).decode
        self._decoders[type_] = decoder
        return decoder


default_codec = MsgspecCodec()
"""The shared default codec instance."""


_DOCUMENTATION = frozenset({"title", "description", "examples", "$comment"})
"""JSON Schema keywords that document a schema without changing what it accepts."""

_VALUES = frozenset({"default", "const", "enum"})
"""JSON Schema keywords whose values are data, not schemas: kept as they are."""

_NAMED_SCHEMAS = frozenset({"properties", "patternProperties", "$defs", "definitions"})
"""JSON Schema keywords whose values map names (kept) to schemas."""


def schema_fingerprint(type_: type[object]) -> str:
    """The SHA-256 (hex) of the canonical JSON Schema of ``type_``: equal for types that
    encode to and decode from the same JSON structure (field names, types, required fields,
    defaults, nested types), different when a field is renamed, removed, added or changes
    type. Docstrings and titles do not count.

    The schema is pydantic's ``model_json_schema()`` for pydantic models and
    ``msgspec.json.schema`` for everything else (dataclasses, ``msgspec.Struct``...),
    serialized with sorted keys. Raises TypeError for a type that has no JSON Schema.
    A new msgspec or pydantic release may word a schema differently; a fingerprint is meant
    for caches (snapshots), where a change only costs a rebuild.
    """
    schema: object
    if _is_pydantic(type_):
        schema = getattr(type_, "model_json_schema")()  # noqa: B009 - duck-typed pydantic
    else:
        schema = msgspec.json.schema(type_)
    canonical = msgspec.json.encode(_without_documentation(schema), order="sorted")
    return hashlib.sha256(canonical).hexdigest()


def _without_documentation(schema: object) -> object:
    if isinstance(schema, list):
        return [_without_documentation(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    kept: dict[object, object] = {}
    for key, value in schema.items():
        if key in _DOCUMENTATION:
            continue
        if key in _VALUES:
            kept[key] = value
        elif key in _NAMED_SCHEMAS and isinstance(value, dict):
            kept[key] = {name: _without_documentation(item) for name, item in value.items()}
        else:
            kept[key] = _without_documentation(value)
    return kept
