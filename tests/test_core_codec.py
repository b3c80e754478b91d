"""MsgspecCodec and schema_fingerprint, each test on a fresh codec (no decoder cached by an
earlier test), for what events, snapshots and views rely on."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated

import msgspec
import pydantic
import pytest

from cqrs import MsgspecCodec
from cqrs.codec import schema_fingerprint


class Attachment(pydantic.BaseModel):
    name: str
    content: bytes
    size: Decimal


@dataclass(frozen=True)
class Counts:
    by_day: dict[int, str]
    blob: bytes
    total: Decimal = Decimal(0)


@dataclass(frozen=True)
class Validated:
    """A plain dataclass that happens to have a ``model_validate`` method (not pydantic)."""

    value: int

    @classmethod
    def model_validate(cls, data: object) -> Validated:  # noqa: ARG003 - a stand-in
        return cls(-1)


def test_pydantic_models_encode_in_their_json_form():
    # bytes are text in pydantic's JSON form (base64 in msgspec's): the stored JSON must be
    # what the model itself would write, or model_validate_json reads something else back.
    attachment = Attachment(name="a.txt", content=b"hello", size=Decimal("1.50"))
    codec = MsgspecCodec()
    encoded = codec.encode(attachment)
    assert msgspec.json.decode(encoded) == {"name": "a.txt", "content": "hello", "size": "1.50"}
    assert codec.decode(encoded, Attachment) == attachment
    assert codec.convert(codec.decode_untyped(encoded), Attachment) == attachment


def test_pydantic_models_inside_other_values_encode_too():
    codec = MsgspecCodec()
    encoded = codec.encode({"files": [Attachment(name="x", content=b"", size=Decimal(0))]})
    assert msgspec.json.decode(encoded) == {"files": [{"name": "x", "content": "", "size": "0"}]}


def test_a_value_the_codec_cannot_encode_is_a_type_error_naming_its_type():
    class Opaque:
        pass

    with pytest.raises(TypeError, match=r"cannot encode an object of type .*Opaque"):
        MsgspecCodec().encode({"x": Opaque()})


def test_decimals_are_encoded_as_exact_strings():
    assert MsgspecCodec().encode([Decimal("0.1"), Decimal("1E+2")]) == b'["0.1","1E+2"]'


def test_decode_untyped_gives_plain_values():
    codec = MsgspecCodec()
    assert codec.decode_untyped(b'{"a": [1, 2.5, "x", null, true]}') == {
        "a": [1, 2.5, "x", None, True]
    }
    assert codec.decode_untyped('{"text": "as str"}') == {"text": "as str"}


def test_metadata_decodes_to_strings_only():
    codec = MsgspecCodec()
    assert codec.decode_metadata(b'{"user": "alice", "trace": "t-1"}') == {
        "user": "alice",
        "trace": "t-1",
    }
    with pytest.raises(ValueError, match="Expected `str`"):
        codec.decode_metadata(b'{"user": 1}')
    with pytest.raises(ValueError, match="Expected `object`"):
        codec.decode_metadata(b'["user"]')


def test_decode_builds_the_type_and_reuses_it():
    codec = MsgspecCodec()
    value = Counts({1: "mon"}, b"\x00\xff", Decimal("2.5"))
    encoded = codec.encode(value)
    assert codec.decode(encoded, Counts) == value
    assert codec.decode(encoded.decode(), Counts) == value  # str as well as bytes
    with pytest.raises(ValueError, match="total"):
        codec.decode(b'{"by_day": {}, "blob": "", "total": []}', Counts)


def test_convert_accepts_every_form_encode_produces():
    # After upcasting, payloads are plain values: int dict keys are JSON strings, bytes are
    # base64 text. convert must take them back, as decode does.
    codec = MsgspecCodec()
    value = Counts({1: "mon", 7: "sun"}, b"\x00\xff", Decimal("12.30"))
    plain = codec.decode_untyped(codec.encode(value))
    assert plain == {"by_day": {"1": "mon", "7": "sun"}, "blob": "AP8=", "total": "12.30"}
    assert codec.convert(plain, Counts) == value
    assert codec.convert(plain, Counts) == value  # the second time from the cache
    with pytest.raises(ValueError, match="by_day"):
        codec.convert({"by_day": [], "blob": ""}, Counts)


def test_convert_builds_pydantic_models_with_pydantic():
    codec = MsgspecCodec()
    plain = {"name": "n", "content": "raw text", "size": "3"}
    assert codec.convert(plain, Attachment) == Attachment(
        name="n", content=b"raw text", size=Decimal(3)
    )
    with pytest.raises(pydantic.ValidationError):
        codec.convert({"name": "n"}, Attachment)


def test_decode_builds_pydantic_models_with_pydantic():
    codec = MsgspecCodec()
    assert codec.decode(b'{"name": "n", "content": "abc", "size": 1}', Attachment) == Attachment(
        name="n", content=b"abc", size=Decimal(1)
    )
    with pytest.raises(pydantic.ValidationError):
        codec.decode(b'{"name": "n"}', Attachment)


def test_only_types_with_both_pydantic_methods_count_as_pydantic():
    codec = MsgspecCodec()
    assert codec.decode(b'{"value": 3}', Validated) == Validated(3)
    assert codec.convert({"value": 4}, Validated) == Validated(4)


# -- schema fingerprints ---------------------------------------------------------------------


def _all_optional(name: str, fields: dict[str, object]) -> type[object]:
    namespace = {"__annotations__": dict(fields), **dict.fromkeys(fields)}
    return dataclass(type(name, (), namespace))


def test_field_order_does_not_change_the_fingerprint():
    # JSON objects are read by name, so the order fields are declared in is no structure.
    forward = _all_optional("State", {"a": int | None, "b": str | None, "c": bool | None})
    backward = _all_optional("State", {"c": bool | None, "b": str | None, "a": int | None})
    assert schema_fingerprint(forward) == schema_fingerprint(backward)


def test_documentation_nested_anywhere_does_not_change_the_fingerprint():
    plain = _all_optional("State", {"tags": list[str] | None, "scores": dict[str, int] | None})
    documented = _all_optional(
        "State",
        {
            "tags": list[Annotated[str, msgspec.Meta(title="Tag", description="a tag")]] | None,
            "scores": dict[str, Annotated[int, msgspec.Meta(description="points")]] | None,
        },
    )
    assert schema_fingerprint(documented) == schema_fingerprint(plain)
    retyped = _all_optional("State", {"tags": list[int] | None, "scores": dict[str, int] | None})
    assert schema_fingerprint(retyped) != schema_fingerprint(plain)
