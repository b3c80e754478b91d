"""``cqrs.cli.projections``: what ``load_projections`` accepts (and the exact error for what
it does not), and what ``projections status | run | reset`` report, over a small SQLite
store: Account a (3 events), Order o (2 events), interleaved."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from test_cli_projections import Count, RawDecoder, count
from typer.testing import CliRunner

import cqrs
from cqrs import EventEnvelope, PersistedEventRepository, SerializedEvent, ViewProjection
from cqrs.checkpoints import MemoryCheckpoints
from cqrs.cli.app import app
from cqrs.cli.projections import ProjectionSet, _lag, load_projections
from cqrs.errors import ConfigurationError

MODULE = "test_core_cli_projections"


def invoke(*args: str):
    """``cqrs ARGS`` in-process; the result has exit_code, stdout and stderr."""
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


class Counter:
    """A plain projection (not a ViewProjection): counts what it is given."""

    event_types = None

    def __init__(self, name: str, *types: str) -> None:
        self.name = name
        self.sources = [RawDecoder(aggregate_type) for aggregate_type in types]
        self.seen = 0

    async def handle(self, events: Sequence[EventEnvelope[Any]]) -> None:
        self.seen += len(events)


class Broken(Counter):
    async def handle(self, events: Sequence[EventEnvelope[Any]]) -> None:
        msg = "cannot count"
        raise RuntimeError(msg)


def counters(repository: PersistedEventRepository) -> list[Counter]:
    return [Counter("everything", "Order", "Account"), Counter("orders", "Order")]


async def views(repository: PersistedEventRepository) -> list[ViewProjection[Count]]:
    table = repository.view_repository(Count, "core_cli_counts")
    await table.create_schema()
    return [
        ViewProjection(
            "counts",
            [RawDecoder("Account"), RawDecoder("Order")],
            table,
            Count,
            key=lambda envelope: envelope.aggregate_type,
            update=count,
        )
    ]


def broken(repository: PersistedEventRepository) -> Broken:
    return Broken("broken", "Account")


def nothing(repository: PersistedEventRepository) -> None:
    return None


class CallableCounter(Counter):
    """A projection that happens to be callable: it is taken as it is, not called."""

    def __call__(self, *args: object) -> None:
        msg = "a projection is not a function of the repository"
        raise AssertionError(msg)


ONE = Counter("one", "Account")
CALLABLE = CallableCounter("callable", "Order")
LIST = [Counter("first", "Account")]
TUPLE = (Counter("second", "Order"),)
NUMBER = 5
EMPTY: list[Counter] = []
MIXED = [Counter("third", "Account"), "not a projection"]
SHARED = MemoryCheckpoints("elsewhere")


class Holder:
    """Holds a function, found as ``module:Holder.build``."""

    @staticmethod
    def build(_repository: PersistedEventRepository) -> list[Counter]:
        return [Counter("nested", "Order")]


# Objects with ``projections`` and the ``checkpoints`` they run with (or None).
HELD = SimpleNamespace(projections=[Counter("held", "Account")], checkpoints=SHARED)
SAME = SimpleNamespace(projections=[Counter("also_held", "Order")], checkpoints=SHARED)
OTHER = SimpleNamespace(
    projections=[Counter("other_held", "Order")], checkpoints=MemoryCheckpoints("other")
)
UNHELD = SimpleNamespace(projections=[Counter("unheld", "Order")], checkpoints=None)
BARE = SimpleNamespace(projections=[Counter("bare", "Order")])  # no checkpoints attribute


class ElsewhereViews:
    """The view projection with checkpoints kept outside the views' database."""

    def __init__(self, repository: PersistedEventRepository) -> None:
        self.repository = repository
        self.checkpoints = SHARED

    @property
    def projections(self) -> list[ViewProjection[Count]]:
        table = self.repository.view_repository(Count, "core_cli_counts")
        return [
            ViewProjection(
                "counts",
                [RawDecoder("Account")],
                table,
                Count,
                key=lambda envelope: envelope.aggregate_type,
                update=count,
            )
        ]


def _event(aggregate_type: str, aggregate_id: str, sequence: int) -> SerializedEvent:
    return SerializedEvent(
        aggregate_type,
        aggregate_id,
        sequence,
        "Opened" if sequence == 1 else "Deposited",
        "1.0",
        '{"amount": 1}',
        "{}",
        datetime(2025, 3, 1, tzinfo=UTC),
        uuid.uuid4(),
    )


async def _fill(repository: PersistedEventRepository) -> None:
    # positions: a1 1, a2 2, o1 3, a3 4, o2 5
    await repository.persist([_event("Account", "a", 1), _event("Account", "a", 2)], None)
    await repository.persist([_event("Order", "o", 1)], None)
    await repository.persist([_event("Account", "a", 3)], None)
    await repository.persist([_event("Order", "o", 2)], None)


@pytest.fixture
def store(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'store.db'}"

    async def fill() -> None:
        async with cqrs.connect(url) as repository:
            await _fill(repository)

    asyncio.run(fill())
    return url


async def _load(*specs: str, table: str | None = None) -> ProjectionSet:
    async with cqrs.connect("memory://") as repository:
        if table is None:
            return await load_projections(specs, repository)
        return await load_projections(specs, repository, table)


async def _refused(spec: str) -> str:
    with pytest.raises(ConfigurationError) as refused:
        await _load(spec)
    return str(refused.value)


# -- load_projections ------------------------------------------------------------------------


async def test_a_spec_that_is_not_module_colon_object_is_refused():
    for spec in ("nocolon", ":counters", f"{MODULE}:"):
        assert await _refused(spec) == (
            f"{spec!r} is not module:object (e.g. myapp.projections:build)"
        )


async def test_a_module_that_cannot_be_imported_is_named():
    assert await _refused("no_such_module_xyz:build") == (
        "cannot import 'no_such_module_xyz' (from 'no_such_module_xyz:build'): "
        "No module named 'no_such_module_xyz'"
    )


async def test_a_missing_object_is_named_with_its_whole_path():
    for attribute in ("missing", "Holder.missing", "Holder:build"):
        spec = f"{MODULE}:{attribute}"
        assert await _refused(spec) == f"{MODULE!r} has no {attribute!r} (from {spec!r})"


async def test_objects_that_give_no_projections_are_refused_with_their_type():
    for attribute, kind in (
        ("NUMBER", "int"),
        ("EMPTY", "list"),
        ("MIXED", "list"),
        ("nothing", "NoneType"),
        ("Holder.build.__name__", "str"),
    ):
        spec = f"{MODULE}:{attribute}"
        assert await _refused(spec) == f"{spec!r} gives no projections (got {kind})"


async def test_every_form_of_spec_gives_its_projections_in_order():
    found = await _load(
        f"{MODULE}:counters",
        f"{MODULE}:views",
        f"{MODULE}:ONE",
        f"{MODULE}:LIST",
        f"{MODULE}:TUPLE",
        f"{MODULE}:Holder.build",
        f"{MODULE}:broken",
        f"{MODULE}:UNHELD",
        f"{MODULE}:CALLABLE",
        f"{MODULE}:BARE",
    )
    assert [p.name for p in found.projections] == [
        "everything",
        "orders",
        "counts",
        "one",
        "first",
        "second",
        "nested",
        "broken",
        "unheld",
        "callable",
        "bare",
    ]
    assert found.projections[3] is ONE
    assert found.projections[-2] is CALLABLE
    assert found.projections[4] is LIST[0]


async def test_the_repositorys_checkpoints_in_the_table_given_unless_brought():
    async with cqrs.connect("memory://") as repository:
        await repository.checkpoint_store("projections").reset("orders", 3)
        await repository.checkpoint_store("elsewhere").reset("orders", 4)
        default = await load_projections([f"{MODULE}:counters"], repository)
        assert await default.checkpoints.position("orders") == 3
        named = await load_projections([f"{MODULE}:counters"], repository, "elsewhere")
        assert await named.checkpoints.position("orders") == 4
        unheld = await load_projections([f"{MODULE}:UNHELD"], repository, "elsewhere")
        assert await unheld.checkpoints.position("orders") == 4
    brought = await _load(f"{MODULE}:counters", f"{MODULE}:HELD", f"{MODULE}:SAME")
    assert brought.checkpoints is SHARED
    assert [p.name for p in brought.projections] == ["everything", "orders", "held", "also_held"]


async def test_projections_bringing_different_stores_are_refused():
    assert await _refused_many(f"{MODULE}:HELD", f"{MODULE}:OTHER") == (
        "the projections bring different checkpoint stores: name them one store at a time"
    )


async def _refused_many(*specs: str) -> str:
    with pytest.raises(ConfigurationError) as refused:
        await _load(*specs)
    return str(refused.value)


async def test_modules_in_the_current_directory_are_found(tmp_path, monkeypatch):
    (tmp_path / "core_cli_cwd_projections.py").write_text(
        textwrap.dedent(
            """
            from test_core_cli_projections import Counter

            PROJECTIONS = [Counter("from_cwd", "Account")]
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in {"", str(tmp_path)}])
    monkeypatch.delitem(sys.modules, "core_cli_cwd_projections", raising=False)
    found = await _load("core_cli_cwd_projections:PROJECTIONS")
    assert [p.name for p in found.projections] == ["from_cwd"]
    assert sys.path[0] == str(tmp_path)  # ahead of everything else
    await _load("core_cli_cwd_projections:PROJECTIONS")
    assert sys.path.count(str(tmp_path)) == 1


# -- status ----------------------------------------------------------------------------------


def test_status_counts_the_lag_of_each_projections_types(store):
    spec = f"{MODULE}:counters"

    async def checkpoint() -> None:
        async with cqrs.connect(store) as repository:
            checkpoints = repository.checkpoint_store("projections")
            await checkpoints.create_schema()
            await checkpoints.reset("orders", 3)

    asyncio.run(checkpoint())
    result = invoke("projections", "status", spec, "--json", "--database-url", store)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == [
        {"name": "everything", "checkpoint": 0, "head": 5, "lag_events": 5, "parked": 0},
        {"name": "orders", "checkpoint": 3, "head": 5, "lag_events": 1, "parked": 0},
    ]
    text = invoke("projections", "status", spec, "--name", "orders", "--database-url", store)
    assert text.stdout.splitlines() == ["orders: checkpoint 3, head 5, lag 1 events, 0 parked"]


def test_unknown_names_are_listed_with_the_known_ones(store):
    result = invoke(
        "projections", "status", f"{MODULE}:counters", "--name", "orders", "--name", "x",
        "--name", "y", "--database-url", store,
    )  # fmt: skip
    assert result.exit_code == 2
    assert result.stderr == (
        "cqrs: error: no projection named 'x', 'y'; there are ['everything', 'orders']\n"
    )


def test_projection_commands_need_a_url(monkeypatch):
    monkeypatch.delenv("CQRS_DATABASE_URL", raising=False)
    result = invoke("projections", "status", f"{MODULE}:counters")
    assert result.exit_code == 2
    assert "no database URL: pass --database-url" in " ".join(result.stderr.split())


async def test_lag_without_a_count_reads_the_events_of_its_types():
    async with cqrs.connect("memory://") as repository:
        await _fill(repository)
        orders = Counter("orders", "Order")
        both = Counter("both", "Order", "Account")
        assert await _lag(repository, orders, 0) == (2, 5)
        assert await _lag(repository, orders, 3) == (1, 5)
        assert await _lag(repository, orders, 5) == (0, 5)
        assert await _lag(repository, both, 1) == (4, 5)
        assert await _lag(repository, Counter("accounts", "Account"), 2) == (1, 4)
        assert await _lag(repository, Counter("none", "Other"), 2) == (0, 2)


async def test_lag_with_a_count(tmp_path):
    async with cqrs.connect(f"sqlite:///{tmp_path / 'lag.db'}") as repository:
        await _fill(repository)
        assert await _lag(repository, Counter("orders", "Order"), 3) == (1, 5)
        assert await _lag(repository, Counter("both", "Order", "Account"), 1) == (4, 5)
        assert await _lag(repository, Counter("accounts", "Account"), 4) == (0, 4)


# -- run -------------------------------------------------------------------------------------


def test_run_until_caught_up_reports_each_projection(store):
    result = invoke(
        "projections", "run", f"{MODULE}:counters", "--until-caught-up", "--json",
        "--database-url", store,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == [
        {
            "name": "everything",
            "state": "stopped",
            "checkpoint": 5,
            "head": 5,
            "lag_events": 0,
            "error": None,
        },
        {
            "name": "orders",
            "state": "stopped",
            "checkpoint": 5,
            "head": 5,
            "lag_events": 0,
            "error": None,
        },
    ]
    again = invoke(
        "projections", "run", f"{MODULE}:counters", "--until-caught-up", "--database-url", store
    )
    assert again.exit_code == 0
    assert again.stdout.splitlines() == ["everything: stopped at 5", "orders: stopped at 5"]


def test_a_failed_projection_is_reported_with_its_error_and_exit_1(store):
    result = invoke(
        "projections", "run", f"{MODULE}:broken", f"{MODULE}:counters", "--until-caught-up",
        "--database-url", store,
    )  # fmt: skip
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[0].startswith("broken: failed at 0 (")
    assert "cannot count" in lines[0]
    assert lines[0].endswith(")")
    assert lines[1:] == ["everything: stopped at 5", "orders: stopped at 5"]
    data = invoke(
        "projections", "run", f"{MODULE}:broken", "--until-caught-up", "--json",
        "--database-url", store,
    )  # fmt: skip
    assert data.exit_code == 1
    (row,) = json.loads(data.stdout)
    assert (row["name"], row["state"], row["checkpoint"]) == ("broken", "failed", 0)
    assert "cannot count" in row["error"]


# -- reset -----------------------------------------------------------------------------------


def test_reset_says_what_it_did_to_each_projection(store):
    ran = invoke(
        "projections", "run", f"{MODULE}:counters", f"{MODULE}:views", "--until-caught-up",
        "--database-url", store,
    )  # fmt: skip
    assert ran.exit_code == 0, ran.stderr
    views_back = invoke(
        "projections", "reset", f"{MODULE}:counters", f"{MODULE}:views", "--to", "3", "--yes",
        "--database-url", store,
    )  # fmt: skip
    assert views_back.exit_code == 0, views_back.stderr
    assert views_back.stderr.splitlines() == [
        "everything: checkpoint 3",
        "orders: checkpoint 3",
        (
            "counts: checkpoint 3; its views (if any) are not in the checkpoints' database: "
            "clear them yourself"
        ),
    ]
    to_zero = invoke(
        "projections", "reset", f"{MODULE}:counters", f"{MODULE}:views", "--name", "counts",
        "--name", "orders", "--yes", "--database-url", store,
    )  # fmt: skip
    assert to_zero.exit_code == 0, to_zero.stderr
    assert to_zero.stderr.splitlines() == [
        "counts: views cleared, checkpoint 0",
        "orders: checkpoint 0",
    ]
    status = invoke(
        "projections", "status", f"{MODULE}:counters", f"{MODULE}:views", "--json",
        "--database-url", store,
    )  # fmt: skip
    assert {row["name"]: row["checkpoint"] for row in json.loads(status.stdout)} == {
        "everything": 3,
        "orders": 0,
        "counts": 0,
    }

    async def view() -> Count | None:
        async with cqrs.connect(store) as repository:
            return await repository.view_repository(Count, "core_cli_counts").load("Account")

    assert asyncio.run(view()) is None


def test_views_outside_the_checkpoints_database_are_left_to_their_owner(store):
    result = invoke(
        "projections", "reset", f"{MODULE}:ElsewhereViews", "--yes", "--database-url", store
    )
    assert result.exit_code == 0, result.stderr
    assert result.stderr.splitlines() == [
        (
            "counts: checkpoint 0; its views (if any) are not in the checkpoints' database: "
            "clear them yourself"
        )
    ]


def test_ctrl_c_stops_running_projections_after_their_batches(store):
    """Without --until-caught-up the runner goes on until Ctrl-C (SIGINT) or SIGTERM."""
    finished = threading.Event()

    def interrupt_once_caught_up() -> None:
        async def caught_up() -> bool:
            async with cqrs.connect(store, create_schema=False) as repository:
                checkpoints = repository.checkpoint_store("projections")
                return await checkpoints.position("orders") == 5

        deadline = time.monotonic() + 30
        while not finished.is_set() and time.monotonic() < deadline:
            with contextlib.suppress(cqrs.CqrsError):
                if asyncio.run(caught_up()) and not finished.is_set():
                    os.kill(os.getpid(), signal.SIGINT)
                    return
            time.sleep(0.05)

    helper = threading.Thread(target=interrupt_once_caught_up)
    helper.start()
    try:
        result = invoke("projections", "run", f"{MODULE}:counters", "--database-url", store)
    finally:
        finished.set()
        helper.join()
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == ["everything: stopped at 5", "orders: stopped at 5"]
