"""Who is calling: API keys sent as ``Authorization: Bearer KEY``.

Keys are configured as ``principal:KEY`` entries, separated by commas or new lines, in the
environment variable ``BANK_API_KEYS`` or a file named by ``--api-keys-file`` (``#`` starts
a comment there). An entry may give the key's SHA-256 instead of the key,
``principal:sha256:HEX``, so the file need not hold a secret at all. Only the SHA-256
digests are kept in memory; a request's key is hashed and looked up by digest, so no key is
ever compared character by character. Keys are random tokens (at least
:data:`MIN_KEY_LENGTH` characters, e.g. ``python -c "import secrets;
print(secrets.token_urlsafe(32))"``), which is why a fast hash is enough: there is nothing
to guess from a digest of 256 random bits.

Each principal owns the accounts it opens: the API stores them under the aggregate id
``principal/account`` (:meth:`Principal.aggregate_id`), so one principal's account ``A`` and
another's are different accounts and no principal can learn whether another's exists.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

ENVIRONMENT_VARIABLE = "BANK_API_KEYS"
"""The environment variable holding ``principal:KEY`` entries."""

MIN_KEY_LENGTH = 16
"""The shortest key accepted (characters)."""

PRINCIPAL_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")
"""What a principal's name may be."""

_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")


class ApiKeysError(ValueError):
    """The key configuration is wrong; the message names the source and the entry (never
    the key)."""


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller. ``namespaced`` is False only for the insecure local mode, where
    every caller is ``anonymous`` and account ids are stored as given."""

    name: str
    namespaced: bool = True

    def aggregate_id(self, account_id: str) -> str:
        """The aggregate id under which this principal's account ``account_id`` is stored."""
        return f"{self.name}/{account_id}" if self.namespaced else account_id

    def account_id(self, aggregate_id: str) -> str | None:
        """The account id the principal knows ``aggregate_id`` by, or None if it is not one
        of the principal's accounts."""
        if not self.namespaced:
            return None if "/" in aggregate_id else aggregate_id
        prefix = f"{self.name}/"
        return aggregate_id[len(prefix) :] if aggregate_id.startswith(prefix) else None


ANONYMOUS = Principal("anonymous", namespaced=False)
"""The caller when the server runs with ``--insecure-no-auth``."""


def digest(key: str) -> bytes:
    """The SHA-256 digest under which ``key`` is held."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


class ApiKeys:
    """The principals and the digests of their keys (several keys per principal are fine,
    e.g. while a key is rotated)."""

    def __init__(self, digests: Mapping[bytes, str]) -> None:
        self._principals = dict(digests)

    def __len__(self) -> int:
        return len(self._principals)

    def __repr__(self) -> str:
        return f"ApiKeys(principals={sorted(set(self._principals.values()))})"

    @classmethod
    def parse(cls, text: str, source: str) -> ApiKeys:
        """Parse ``principal:KEY`` / ``principal:sha256:HEX`` entries separated by commas or
        new lines; raise ApiKeysError naming ``source`` and the entry number."""
        digests: dict[bytes, str] = {}
        lines = (line.partition("#")[0] for line in text.splitlines())
        entries = [e.strip() for line in lines for e in line.split(",") if e.strip()]
        for number, entry in enumerate(entries, 1):
            principal, colon, key = entry.partition(":")
            where = f"{source}, entry {number}"
            if not colon or PRINCIPAL_PATTERN.fullmatch(principal) is None:
                msg = (
                    f"{where}: expected principal:KEY with a principal of 1 to 64 letters, "
                    f"digits, '_', '.' or '-' (got {principal[:64]!r})"
                )
                raise ApiKeysError(msg)
            if key.startswith("sha256:"):
                hex_digest = key.removeprefix("sha256:").lower()
                if _HEX_DIGEST.fullmatch(hex_digest) is None:
                    msg = f"{where} ({principal}): sha256: must be followed by 64 hex digits"
                    raise ApiKeysError(msg)
                value = bytes.fromhex(hex_digest)
            elif len(key) < MIN_KEY_LENGTH or not key.isprintable() or " " in key:
                msg = (
                    f"{where} ({principal}): a key must be at least {MIN_KEY_LENGTH} "
                    "printable characters without spaces"
                )
                raise ApiKeysError(msg)
            else:
                value = digest(key)
            if digests.setdefault(value, principal) != principal:
                msg = f"{where} ({principal}): the same key is given to two principals"
                raise ApiKeysError(msg)
        if not digests:
            msg = f"{source}: no keys"
            raise ApiKeysError(msg)
        return cls(digests)

    @classmethod
    def from_file(cls, path: str | Path) -> ApiKeys:
        """The keys in a file (UTF-8); ApiKeysError if it cannot be read or parsed."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeError) as error:
            msg = f"cannot read the API keys file {str(path)!r}: {error}"
            raise ApiKeysError(msg) from None
        return cls.parse(text, f"API keys file {str(path)!r}")

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> ApiKeys | None:
        """The keys in ``$BANK_API_KEYS``, or None when it is unset or empty."""
        text = environ.get(ENVIRONMENT_VARIABLE, "")
        return cls.parse(text, f"${ENVIRONMENT_VARIABLE}") if text.strip() else None

    def authenticate(self, key: str) -> Principal | None:
        """The principal holding ``key``, or None."""
        name = self._principals.get(digest(key))
        return None if name is None else Principal(name)
