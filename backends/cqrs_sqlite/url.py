"""``sqlite://`` URLs, as used by ``cqrs.connect``."""

from __future__ import annotations

from urllib.parse import parse_qsl, unquote, urlsplit

from cqrs.connection import redact_url
from cqrs.errors import ConfigurationError
from cqrs_sqlite.repository import MEMORY, SqliteEventRepository

__all__ = ["from_url"]

_OPTIONS = {"busy_timeout", "synchronous", "events_table", "snapshots_table"}


def from_url(url: str) -> SqliteEventRepository:
    """The (unopened) repository named by a ``sqlite://`` URL.

    The path is everything after ``sqlite:///``, as in SQLAlchemy:

    - ``sqlite:///bank.db``, ``sqlite:///data/bank.db``: relative to the working directory;
    - ``sqlite:////var/lib/bank.db`` (four slashes): the absolute path ``/var/lib/bank.db``;
    - ``sqlite://:memory:``, ``sqlite:///:memory:`` or ``sqlite://``: a private in-memory
      database.

    Percent-escapes in the path are decoded. Optional query parameters: ``busy_timeout``
    (seconds), ``synchronous`` (``FULL``, ``NORMAL``...), ``events_table``,
    ``snapshots_table``; e.g. ``sqlite:///bank.db?synchronous=NORMAL``. Anything else
    raises ConfigurationError.
    """
    shown = redact_url(url)
    parts = urlsplit(url)
    if parts.scheme.lower() != "sqlite":
        raise ConfigurationError(f"not a sqlite:// URL: {shown!r}")
    if parts.netloc not in ("", MEMORY) or parts.fragment:
        msg = (
            f"invalid SQLite URL {shown!r}: use sqlite:///relative.db, sqlite:////absolute.db "
            "or sqlite://:memory:"
        )
        raise ConfigurationError(msg)
    path = unquote(parts.path[1:]) if parts.path.startswith("/") else unquote(parts.path)
    if parts.netloc == MEMORY or path in ("", MEMORY):
        if parts.netloc == MEMORY and path:
            raise ConfigurationError(f"invalid SQLite URL {shown!r}: nothing may follow :memory:")
        path = MEMORY
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = set(options) - _OPTIONS
    if unknown:
        msg = f"unknown option(s) {sorted(unknown)} in {shown!r}; known: {sorted(_OPTIONS)}"
        raise ConfigurationError(msg)
    try:
        busy_timeout = float(options.get("busy_timeout", "5"))
        return SqliteEventRepository(
            path,
            options.get("events_table", "events"),
            options.get("snapshots_table", "snapshots"),
            busy_timeout=busy_timeout,
            synchronous=options.get("synchronous", "FULL"),
        )
    except ConfigurationError:
        raise
    except ValueError as error:
        raise ConfigurationError(f"invalid SQLite URL {shown!r}: {error}") from error
