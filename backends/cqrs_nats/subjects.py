"""Subjects of integration events: ``<prefix>.<aggregate_type>.<aggregate_id>``.

A NATS subject is tokens joined by ``.``; a token may hold neither ``.`` nor the wildcards
``*`` and ``>`` nor whitespace, and may not be empty. Aggregate types and ids may hold
anything, so each is escaped into one token: every character that is ``.``, ``*``, ``>``,
``%``, whitespace, a control character or not ASCII is replaced by ``%XX`` for each byte of
its UTF-8 form (``%`` itself becomes ``%25``, so the escaping is reversible and two
different ids never share a subject); an empty value becomes the token ``%``. Everything
else (letters, digits, ``-``, ``_``, ``:`` ...) is kept, so ordinary ids read as themselves:
``events.BankAccount.acc-1``, and the account ``a.b c`` is ``events.BankAccount.a%2Eb%20c``.
"""

from __future__ import annotations

import re

from cqrs import ConfigurationError

__all__ = ["check_prefix", "escape_token", "subject_for", "unescape_token"]

_SAFE = frozenset(chr(c) for c in range(0x21, 0x7F)) - frozenset(".*>%")
_UNSAFE = re.compile(r"[^\x21-\x7e]|[.*>%]")
_ESCAPED = re.compile(r"%([0-9A-F]{2})")


def escape_token(value: str) -> str:
    """``value`` as one subject token, escaped as the module describes."""
    if not value:
        return "%"
    if _UNSAFE.search(value) is None:
        return value
    return "".join(
        char if char in _SAFE else "".join(f"%{byte:02X}" for byte in char.encode())
        for char in value
    )


def unescape_token(token: str) -> str:
    """The value :func:`escape_token` made ``token`` from."""
    if token == "%":  # noqa: S105 - a subject token, not a password
        return ""
    if "%" not in token:
        return token
    raw = _ESCAPED.sub(lambda match: chr(int(match.group(1), 16)), token)
    return raw.encode("latin-1").decode()


def check_prefix(prefix: object) -> str:
    """Return ``prefix`` if it is a usable subject prefix (one or more tokens joined by
    ``.``, none of them empty, without wildcards or whitespace); else raise
    ConfigurationError naming it."""
    if (
        not isinstance(prefix, str)
        or not prefix
        or any(not token or not set(token) <= _SAFE for token in prefix.split("."))
    ):
        msg = (
            f"subject prefix must be dot-separated tokens without '*', '>', '%' or "
            f"whitespace, not {prefix!r}"
        )
        raise ConfigurationError(msg)
    return prefix


def subject_for(prefix: str, aggregate_type: str, aggregate_id: str) -> str:
    """The subject of an event of this aggregate: ``<prefix>.<type>.<id>``, escaped."""
    return f"{prefix}.{escape_token(aggregate_type)}.{escape_token(aggregate_id)}"
