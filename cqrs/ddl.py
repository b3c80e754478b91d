"""The DDL files in ``sql/<dialect>/`` and how every SQL backend applies them.

The files are the one source of truth for the SQL schemas. In a wheel they are packaged as
``cqrs/sql``; in a source checkout (and an editable install) they are read from the
repository's ``sql/`` directory.

**Table names.** The files are plain SQL written for the default tables ``events``,
``snapshots``, ``views`` and ``projections`` (so ``001_seed.sql`` is the seed DDL, byte for
byte, and runs as it is). :func:`render` renames those words, and the names derived from
them with an ``_`` suffix (``events_position_key``), to the configured names, quoted;
comments and string literals are left alone. This is the one placeholder syntax of every
dialect.

**Migrations.** The numbered files of a dialect are applied in name order, each once, and
recorded by name in a table of the backend's; a file once released is never changed, since
databases remember it by name. :func:`migrations` gives the files rendered and split into
statements, :func:`pending` those not yet recorded. A backend supplies only the lock that
makes concurrent callers wait (SQLite's write lock, PostgreSQL's advisory lock), its
record table and the execution of the statements.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from cqrs.errors import ConfigurationError
from cqrs.repository import validate_identifier

__all__ = [
    "TABLE_WORDS",
    "DdlFile",
    "Migration",
    "ddl_files",
    "migrations",
    "pending",
    "render",
    "split_statements",
]

DdlFile = tuple[str, str]
"""(file name, SQL text)."""

TABLE_WORDS = ("events", "snapshots", "views", "projections")
"""The table names the DDL files are written for; :func:`render` renames them."""

# What render and split_statements step over: comments, string literals, quoted identifiers
# and dollar-quoted bodies (PostgreSQL's DO blocks), and the statement separator.
_LEXEME = re.compile(
    r"--[^\n]*"
    r"|/\*.*?\*/"
    r"|'(?:[^']|'')*'"
    r'|"(?:[^"]|"")*"'
    r"|(?P<tag>\$(?:[A-Za-z_]\w*)?\$)(?P<body>.*?)(?P=tag)"
    r"|;",
    re.DOTALL,
)
_COMMENT = re.compile(r"--[^\n]*|/\*.*?\*/", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Migration:
    """One DDL file, rendered for the configured tables and split into statements."""

    name: str
    statements: tuple[str, ...]


def _sql_root() -> Path:
    packaged = Path(str(resources.files("cqrs"))) / "sql"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "sql"


def ddl_files(dialect: str) -> list[DdlFile]:
    """The ``*.sql`` files of ``dialect`` ("postgres", "sqlite", "sqlite/views"...) in name
    order, which is the order they are applied in (files are numbered ``001_...``)."""
    directory = _sql_root() / dialect
    if not directory.is_dir():
        msg = f"no DDL directory for {dialect!r} at {directory}"
        raise FileNotFoundError(msg)
    return [(path.name, path.read_text("utf-8")) for path in sorted(directory.glob("*.sql"))]


def render(sql: str, names: Mapping[str, str]) -> str:
    """``sql`` with each table word of ``names`` (a key of :data:`TABLE_WORDS`), and each
    name derived from it with an ``_`` suffix, renamed to the configured name, quoted: with
    ``{"events": "orders"}``, ``events_position_key`` becomes ``"orders_position_key"``.
    Comments, string literals and quoted identifiers are left as they are; dollar-quoted
    bodies are rendered too. Raises ConfigurationError for a word the files do not use or a
    resulting name that is not a valid identifier (derived names count: keep table names
    under about 45 characters)."""
    unknown = set(names) - set(TABLE_WORDS)
    if unknown:
        msg = f"the DDL files name no tables {sorted(unknown)}"
        raise ConfigurationError(msg)
    if not names:
        return sql
    word = re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")((?:_\w*)?)\b")

    def rename(match: re.Match[str]) -> str:
        return '"' + validate_identifier(names[match[1]] + match[2], "table or index name") + '"'

    parts: list[str] = []
    done = 0
    for lexeme in _LEXEME.finditer(sql):
        parts.append(word.sub(rename, sql[done : lexeme.start()]))
        if lexeme["tag"] is not None:
            parts.append(lexeme["tag"] + render(lexeme["body"], names) + lexeme["tag"])
        else:
            parts.append(lexeme[0])
        done = lexeme.end()
    parts.append(word.sub(rename, sql[done:]))
    return "".join(parts)


def split_statements(sql: str) -> list[str]:
    """The statements of a script, without their ``;``, skipping ones that are only
    comments. Semicolons in comments, strings, quoted identifiers and dollar-quoted bodies
    do not split (a BEGIN ... END block, as in a SQLite trigger, is not supported)."""
    text = sql + "\n;"  # the newline ends a last line comment
    statements: list[str] = []
    start = 0
    for lexeme in _LEXEME.finditer(text):
        if lexeme[0] == ";":
            statement = text[start : lexeme.start()].strip()
            if _COMMENT.sub("", statement).strip():
                statements.append(statement)
            start = lexeme.end()
    return statements


def migrations(dialect: str, names: Mapping[str, str]) -> list[Migration]:
    """The files of ``dialect`` in the order they are applied, rendered with ``names`` and
    split into statements."""
    return [
        Migration(name, tuple(split_statements(render(sql, names))))
        for name, sql in ddl_files(dialect)
    ]


def pending(files: Sequence[Migration], applied: Collection[str]) -> list[Migration]:
    """The migrations of ``files`` whose names are not in ``applied`` (the names a
    database recorded), in order: what to run now, each followed by recording its name in
    the same transaction."""
    return [migration for migration in files if migration.name not in applied]
