"""The DDL files in ``sql/<dialect>/``: the one source of truth for the SQL schemas.

In a wheel they are packaged as ``cqrs/sql``; in a source checkout (and an editable
install) they are read from the repository's ``sql/`` directory.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["DdlFile", "ddl_files"]

DdlFile = tuple[str, str]
"""(file name, SQL text)."""


def _sql_root() -> Path:
    packaged = Path(str(resources.files("cqrs"))) / "sql"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "sql"


def ddl_files(dialect: str) -> list[DdlFile]:
    """The ``*.sql`` files of ``dialect`` ("postgres" or "sqlite") in name order, which is
    the order they are applied in (files are numbered ``001_...``, ``002_...``)."""
    directory = _sql_root() / dialect
    if not directory.is_dir():
        msg = f"no DDL directory for {dialect!r} at {directory}"
        raise FileNotFoundError(msg)
    return [(path.name, path.read_text("utf-8")) for path in sorted(directory.glob("*.sql"))]
