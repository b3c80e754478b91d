"""Checks made before the server starts, so a bad setup fails at once and says how to fix it.

SQLite opens a file it cannot write read-only without complaint, and a database in WAL mode
also needs its ``-wal`` and ``-shm`` files (and their directory) writable: a server started
that way would answer every write with 503. :func:`check_sqlite_files` refuses to start
instead, naming the files and the fix.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

from cqrs import ConfigurationError


def sqlite_path(database_url: str) -> Path | None:
    """The database file a ``sqlite://`` URL names, or None (another scheme, or in memory)."""
    parts = urlsplit(database_url)
    if parts.scheme.lower() != "sqlite" or parts.netloc:
        return None
    path = unquote(parts.path[1:]) if parts.path.startswith("/") else unquote(parts.path)
    return None if path in ("", ":memory:") else Path(path)


def check_sqlite_files(database_url: str) -> None:
    """Raise ConfigurationError naming the files when a ``sqlite://`` database, its ``-wal``
    or ``-shm`` file, or (for files still to be created) its directory is not writable by
    this process. Other URLs pass."""
    path = sqlite_path(database_url)
    if path is None:
        return
    files = [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]
    blocked = [f for f in files if f.exists() and not os.access(f, os.W_OK)]
    if blocked:
        names = " ".join(str(f) for f in blocked)
        msg = (
            f"the SQLite database cannot be written: {names} "
            f"{'is' if len(blocked) == 1 else 'are'} read-only for this user; SQLite would "
            f"open it read-only and refuse every write. Fix: chmod u+w {names} (or run as "
            "the files' owner), then start again"
        )
        raise ConfigurationError(msg)
    directory = path.parent if str(path.parent) else Path()
    missing = [f for f in files if not f.exists()]
    if missing and directory.exists() and not os.access(directory, os.W_OK):
        msg = (
            f"the SQLite database's directory {directory} is not writable, so "
            f"{' and '.join(f.name for f in missing)} cannot be created. "
            f"Fix: chmod u+w {directory}, or use a database in a writable directory"
        )
        raise ConfigurationError(msg)
