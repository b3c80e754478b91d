"""The backend kit: the rules every backend shares, written once in the core.

Rendering and splitting the DDL files, choosing the migrations to run, and the view
repository base that owns validation, versions, (de)serialization and the error messages;
plus checks that every backend is built the same way from them.
"""

from __future__ import annotations

import inspect
import sqlite3
from dataclasses import dataclass

import pytest

from cqrs import (
    AggregateConflict,
    BaseViewRepository,
    ConfigurationError,
    DeserializationError,
    NotOpenError,
    ViewContext,
    check_page_size,
    not_open,
)
from cqrs.ddl import Migration, ddl_files, migrations, pending, render, split_statements
from cqrs.repository import MAX_AGGREGATE_ID_BYTES
from cqrs_memory import MemoryEventRepository, MemoryViewRepository
from cqrs_mongodb import MongoEventRepository, MongoViewRepository
from cqrs_postgres import PostgresEventRepository, PostgresViewRepository
from cqrs_sqlite import SqliteEventRepository, SqliteViewRepository

# -- render --------------------------------------------------------------------------------


def test_render_renames_table_words_and_derived_names_quoted():
    sql = "CREATE INDEX events_type_position ON events (aggregate_type, position)"
    assert render(sql, {"events": "orders"}) == (
        'CREATE INDEX "orders_type_position" ON "orders" (aggregate_type, position)'
    )
    assert render("DELETE FROM snapshots USING snapshots AS newer", {"snapshots": "s"}) == (
        'DELETE FROM "s" USING "s" AS newer'
    )


def test_render_leaves_other_words_comments_strings_and_quoted_names():
    sql = (
        "-- events and snapshots here are prose\n"
        "SELECT my_events, events2, 'events' FROM \"events\" /* events */ JOIN events;"
    )
    assert render(sql, {"events": "e"}) == (
        "-- events and snapshots here are prose\n"
        'SELECT my_events, events2, \'events\' FROM "events" /* events */ JOIN "e";'
    )


def test_render_renders_dollar_quoted_bodies():
    sql = "DO $$ BEGIN PERFORM count(*) FROM events; RAISE 'events'; END $$;"
    assert render(sql, {"events": "e"}) == (
        "DO $$ BEGIN PERFORM count(*) FROM \"e\"; RAISE 'events'; END $$;"
    )


def test_render_refuses_unknown_words_and_invalid_names():
    with pytest.raises(ConfigurationError, match="name no tables"):
        render("SELECT 1", {"orders": "x"})
    with pytest.raises(ConfigurationError, match="invalid table or index name 'a b'"):
        render("SELECT * FROM events", {"events": "a b"})
    with pytest.raises(ConfigurationError, match="invalid table or index name"):
        render("CREATE INDEX events_type_position ON events (x)", {"events": "x" * 60})
    assert render("SELECT * FROM events", {}) == "SELECT * FROM events"


# -- split_statements -------------------------------------------------------------------------


def test_split_statements_splits_at_top_level_semicolons_only():
    script = """
-- a comment; with a semicolon
CREATE TABLE a (x text DEFAULT ';');  /* ; */
CREATE TABLE "b;c" (y int);
DO $body$ BEGIN RAISE NOTICE 'x'; END $body$;
-- only a comment;
SELECT 1 -- no semicolon at the end"""
    assert split_statements(script) == [
        "-- a comment; with a semicolon\nCREATE TABLE a (x text DEFAULT ';')",
        '/* ; */\nCREATE TABLE "b;c" (y int)',
        "DO $body$ BEGIN RAISE NOTICE 'x'; END $body$",
        "-- only a comment;\nSELECT 1 -- no semicolon at the end",
    ]
    assert split_statements("  \n-- nothing\n;;") == []


# -- migrations ----------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", ["sqlite", "postgres"])
def test_migrations_are_the_files_in_order_rendered_and_split(dialect):
    names = {"events": "orders", "snapshots": "order_snapshots"}
    files = migrations(dialect, names)
    assert [m.name for m in files] == [name for name, _ in ddl_files(dialect)]
    for migration, (_, text) in zip(files, ddl_files(dialect), strict=True):
        assert migration.statements == tuple(split_statements(render(text, names)))
        assert migration.statements


def test_the_files_are_plain_sql_for_the_default_tables():
    for dialect in ("sqlite", "postgres", "sqlite/views", "postgres/views"):
        for _, text in ddl_files(dialect):
            assert "{" not in text.replace("{}", "")  # no placeholder syntax but the names


def test_sqlite_migrations_build_the_configured_tables():
    connection = sqlite3.connect(":memory:")
    for migration in migrations("sqlite", {"events": "Orders", "snapshots": "snaps"}):
        for statement in migration.statements:
            connection.execute(statement)
    for migration in migrations("sqlite/views", {"views": "accounts"}):
        for statement in migration.statements:
            connection.execute(statement)
    tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
    assert {"Orders", "snaps", "accounts", "Orders_type_position"} <= tables
    connection.close()


def test_pending_keeps_the_order_and_skips_the_recorded():
    files = [Migration(f"00{n}_x.sql", (f"SELECT {n}",)) for n in (1, 2, 3)]
    assert pending(files, set()) == files
    assert pending(files, {"002_x.sql", "other.sql"}) == [files[0], files[2]]
    assert pending(files, {m.name for m in files}) == []


# -- page sizes ------------------------------------------------------------------------------


@pytest.mark.parametrize("page_size", [0, -1, 1.5, "5", None, True])
def test_page_sizes_must_be_positive_ints(page_size):
    with pytest.raises(ConfigurationError, match="page_size"):
        check_page_size(page_size)
    assert check_page_size(1) == 1


# -- the view repository base ----------------------------------------------------------------


@dataclass
class Tally:
    count: int = 0


class DictViews(BaseViewRepository[Tally]):
    """What a third-party backend writes: three primitives over its own storage."""

    def __init__(self, table: str = "tallies") -> None:
        super().__init__(Tally, table)
        self.rows: dict[str, tuple[object, object]] = {}
        self.open = True
        self.calls: list[str] = []

    def _check_open(self) -> None:
        if not self.open:
            raise not_open("dict views")

    async def _create_schema(self) -> None:
        self.calls.append("create")

    async def _fetch(self, view_id: str) -> tuple[bytes | str, int] | None:
        self.calls.append(f"fetch {view_id}")
        return self.rows.get(view_id)  # type: ignore[return-value]

    async def _store(self, view_id: str, payload: bytes, version: int, expected: int) -> bool:
        self.calls.append(f"store {view_id} {version} {expected}")
        row = self.rows.get(view_id)
        if (0 if row is None else row[1]) != expected:
            return False
        self.rows[view_id] = (payload, version)
        return True


async def test_the_base_encodes_versions_and_decodes():
    views = DictViews()
    await views.create_schema()
    assert await views.load("v") is None
    await views.update_view(Tally(2), ViewContext("v", 0))
    assert views.rows["v"] == (b'{"count":2}', 1)
    assert await views.load_with_context("v") == (Tally(2), ViewContext("v", 1))
    await views.update_view(Tally(3), ViewContext("v", 1), 7)
    assert await views.load("v") == Tally(3)
    assert views.calls == ["create", "fetch v", "store v 1 0", "fetch v", "store v 7 1", "fetch v"]


async def test_the_base_names_the_view_and_table_in_conflicts():
    views = DictViews()
    await views.update_view(Tally(1), ViewContext("v", 0))
    with pytest.raises(AggregateConflict, match=r"^view 'v' in tallies was stored by another"):
        await views.update_view(Tally(1), ViewContext("v", 0))
    with pytest.raises(AggregateConflict, match=r"^view 'v' in tallies is no longer at version 4$"):
        await views.update_view(Tally(1), ViewContext("v", 4))


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ((b"[1]", 1), "does not decode: "),
        ((b"{", 1), "does not decode: "),
        ((None, 1), "its payload is NoneType, not JSON"),
        ((b"{}", None), "its version is not a positive int"),
        ((b"{}", "1"), "its version is not a positive int"),
        ((b"{}", True), "its version is not a positive int"),
        ((b"{}", 0), "its version is not a positive int"),
    ],
)
async def test_a_stored_view_that_does_not_decode_names_itself(row, reason):
    views = DictViews()
    views.rows["v"] = row
    with pytest.raises(DeserializationError) as raised:
        await views.load("v")
    assert str(raised.value).startswith(f"view 'v' in tallies (version {row[1]!r}) ")
    assert reason in str(raised.value)


@pytest.mark.parametrize("view_id", ["", "a\x00b", "x" * (MAX_AGGREGATE_ID_BYTES + 1), None, 3])
async def test_bad_view_ids_are_refused_before_any_io(view_id):
    views = DictViews()
    with pytest.raises(ValueError, match="view_id"):
        await views.load(view_id)
    with pytest.raises(ValueError, match="view_id"):
        await views.update_view(Tally(), ViewContext(view_id, 0))
    assert views.calls == []


async def test_bad_versions_are_refused_before_any_io():
    views = DictViews()
    for version in (0, 3, -1, "9"):
        with pytest.raises(ValueError, match="greater than 3"):
            await views.update_view(Tally(), ViewContext("v", 3), version)  # type: ignore[arg-type]
    assert views.calls == []


async def test_not_open_is_raised_before_any_io():
    views = DictViews()
    views.open = False
    for call in (
        views.create_schema,
        lambda: views.load("v"),
        lambda: views.load_with_context("v"),
        lambda: views.update_view(Tally(), ViewContext("v", 0)),
    ):
        with pytest.raises(NotOpenError):
            await call()
    assert views.calls == []


def test_table_names_are_validated():
    with pytest.raises(ConfigurationError, match="invalid table name"):
        DictViews("no spaces")


# -- every backend is built the same way -----------------------------------------------------


VIEW_REPOSITORIES = (
    MemoryViewRepository,
    SqliteViewRepository,
    PostgresViewRepository,
    MongoViewRepository,
)
EVENT_REPOSITORIES = (
    MemoryEventRepository,
    SqliteEventRepository,
    PostgresEventRepository,
    MongoEventRepository,
)


def test_view_repositories_are_built_on_the_base_with_one_parameter_order():
    for cls in VIEW_REPOSITORIES:
        assert issubclass(cls, BaseViewRepository), cls
        parameters = list(inspect.signature(cls.__init__).parameters.values())
        assert [p.name for p in parameters[1:3]] == ["view_type", "table"], cls
        assert parameters[3].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD, cls  # the source
        codec = inspect.signature(cls.__init__).parameters["codec"]
        assert codec.kind is inspect.Parameter.KEYWORD_ONLY, cls


def test_event_repositories_share_the_names_of_the_same_things():
    for cls in EVENT_REPOSITORIES:
        assert "page_size" in inspect.signature(cls.__init__).parameters, cls
        tables = list(inspect.signature(cls.with_tables).parameters)
        assert tables == ["self", "events_table", "snapshots_table"], cls
        views = inspect.signature(cls.view_repository).parameters
        assert list(views)[:3] == ["self", "view_type", "table"], cls
        assert views["codec"].kind is inspect.Parameter.KEYWORD_ONLY, cls


async def test_every_view_repository_made_by_a_repository_is_the_backends_own():
    async with MemoryEventRepository() as memory, SqliteEventRepository() as sqlite:
        for repository, cls in ((memory, MemoryViewRepository), (sqlite, SqliteViewRepository)):
            views = repository.view_repository(Tally, "tallies")
            assert type(views) is cls
            assert (views.view_type, views.table) == (Tally, "tallies")
