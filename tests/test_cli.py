"""The ``cqrs`` command line, driven in-process with Typer's CliRunner and as a subprocess.

Stores are seeded through the storage port (``persist``) with events of two aggregate
types, interleaved, with snapshots; PostgreSQL tests each use a database of their own
(created and dropped here), MongoDB tests a database of their own on the server named by
CQRS_TEST_MONGODB_URL. The helpers here are used by the other tests/test_cli_*.py modules.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from typer.testing import CliRunner

import cqrs
from cqrs import SerializedEvent, SerializedSnapshot
from cqrs.cli.app import app
from cqrs.ddl import ddl_files
from cqrs_conformance.plugin import unusable

ROOT = Path(__file__).resolve().parent.parent
POSTGRES_URL = os.environ.get(
    "CQRS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
Row = tuple[str, str, int, str, str, str, str, datetime, str]
"""An event as a copy keeps it: type, id, sequence, event type, version, payload, metadata,
timestamp, event id."""

PASSWORD = "hunter2-Secret"  # noqa: S105 - a made-up password that must never be printed


# -- helpers (used by the other test_cli_* modules too) -------------------------------------


def invoke(*args: str, env: dict[str, str] | None = None):
    """Run ``cqrs ARGS`` in-process; the result has exit_code, stdout and stderr."""
    return CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m cqrs ARGS`` as a real process."""
    return subprocess.run(
        [sys.executable, "-m", "cqrs", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        check=False,
    )


def seed(
    url: str,
    count: int,
    *,
    aggregates: int = 40,
    seed_value: int = 7,
    start: datetime | None = None,
    prefix: str = "agg",
) -> None:
    """Store ``count`` events over ``aggregates`` new aggregates of two types (Account,
    Order; ids start with ``prefix``) in batches of 1-4 events, interleaved, with a snapshot
    after every 5th sequence."""
    asyncio.run(_seed(url, count, aggregates, seed_value, start, prefix))


async def _seed(  # noqa: PLR0917 - seed()'s options, passed on
    url: str, count: int, aggregates: int, seed_value: int, start: datetime | None, prefix: str
) -> None:
    rnd = random.Random(seed_value)
    sequences: dict[tuple[str, str], int] = {}
    clock = start or datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
    async with cqrs.connect(url) as repository:
        done = 0
        while done < count:
            number = rnd.randrange(aggregates)
            key = ("Account" if number % 3 else "Order", f"{prefix}-{number}-é")
            size = min(rnd.randint(1, 4), count - done)
            last = sequences.get(key, 0)
            clock += timedelta(microseconds=rnd.randint(1, 5_000_000))
            events = [
                SerializedEvent(
                    *key,
                    last + index + 1,
                    "Deposited" if index % 2 else "Opened",
                    "1.0" if index % 3 else "2.1",
                    json.dumps({"amount": rnd.randint(1, 999), "note": "ünïcode ✓", "n": [1, 2.5]}),
                    json.dumps({"correlation": f"c-{done + index}", "user": "ann"}),
                    clock,
                    uuid.uuid4(),
                )
                for index in range(size)
            ]
            new_last = last + size
            snapshot = None
            if new_last // 5 > last // 5:
                snapshot = SerializedSnapshot(
                    *key, json.dumps({"balance": new_last}), new_last, new_last // 5
                )
            await repository.persist(events, snapshot)
            sequences[key] = new_last
            done += size


def dump(url: str) -> tuple[list[Row], dict[tuple[str, str], tuple[str, int]]]:
    """Everything a copy keeps, in global order, and each aggregate's snapshot."""
    return asyncio.run(_dump(url))


async def _dump(
    url: str,
) -> tuple[list[Row], dict[tuple[str, str], tuple[str, int]]]:
    def text(data: bytes | str) -> str:
        return data.decode() if isinstance(data, bytes) else data

    rows: list[Row] = []
    snapshots: dict[tuple[str, str], tuple[str, int]] = {}
    async with cqrs.connect(url, create_schema=False) as repository:
        async for event in repository.stream_all_events(None):
            timestamp = (
                event.timestamp if event.timestamp.tzinfo else event.timestamp.replace(tzinfo=UTC)
            )
            rows.append(
                (
                    event.aggregate_type,
                    event.aggregate_id,
                    event.sequence,
                    event.event_type,
                    event.event_version,
                    text(event.payload),
                    text(event.metadata),
                    timestamp,
                    str(event.event_id),
                )
            )
        for key in {(row[0], row[1]) for row in rows}:
            snapshot = await repository.get_snapshot(*key)
            if snapshot is not None:
                snapshots[key] = (text(snapshot.payload), snapshot.last_sequence)
    return rows, snapshots


def with_password(url: str, password: str = PASSWORD) -> str:
    """``url`` with a password in its user part (the test servers do not check it)."""
    parts = urlsplit(url)
    user = parts.username or "postgres"
    host = parts.hostname or "127.0.0.1"
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(
        (parts.scheme, f"{user}:{password}@{host}{port}", parts.path, parts.query, "")
    )


def _postgres_admin():
    psycopg = pytest.importorskip("psycopg")
    try:
        return psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as error:
        unusable("postgres", f"no server at {cqrs.redact_url(POSTGRES_URL)} ({error})")
        raise AssertionError from error  # unreachable: unusable raises


@pytest.fixture
def postgres_db() -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database (dropped afterwards)."""
    name = f"cli_{uuid.uuid4().hex[:12]}"
    with _postgres_admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(POSTGRES_URL)
    try:
        yield urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))
    finally:
        with _postgres_admin() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def mongo_db() -> Iterator[str]:
    """The URL of a new MongoDB database on CQRS_TEST_MONGODB_URL (dropped afterwards)."""
    base = os.environ.get("CQRS_TEST_MONGODB_URL")
    if not base:
        unusable("mongodb", "CQRS_TEST_MONGODB_URL is not set")
    pymongo = pytest.importorskip("pymongo")
    assert base is not None
    parts = urlsplit(base)
    name = f"cli_{uuid.uuid4().hex[:12]}"
    client = pymongo.MongoClient(base, serverSelectionTimeoutMS=3000)
    try:
        client.admin.command("ping")
    except pymongo.errors.PyMongoError as error:
        client.close()
        unusable("mongodb", f"no server at {cqrs.redact_url(base)} ({error})")
    try:
        yield urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))
    finally:
        client.drop_database(name)
        client.close()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store.db'}"


@pytest.fixture
def seeded(sqlite_url: str) -> str:
    seed(sqlite_url, 300)
    return sqlite_url


# -- the command line as a whole -------------------------------------------------------------


def test_help_lists_every_command_and_the_exit_codes():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("schema", "events", "stats", "copy", "verify", "projections"):
        assert command in result.stdout
    assert "Exit codes: 0 ok; 1 failure found" in " ".join(result.stdout.split())
    assert "--install-completion" in result.stdout  # shell completion, as Typer provides it
    for group, commands in (("schema", ("create", "status")), ("events", ("show", "tail"))):
        sub = invoke(group, "--help")
        assert sub.exit_code == 0
        assert all(command in sub.stdout for command in commands)


def test_without_the_extra_it_says_what_to_install_and_exits_2():
    code = "import sys; sys.modules['typer'] = None; from cqrs.cli import main; main()"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=ROOT
    )
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == "cqrs: the command line needs its extra: pip install 'cqrs-es[cli]'"
    )


def test_the_console_script_and_python_m_run_the_same_app(seeded):
    script = Path(sys.executable).with_name("cqrs")
    by_script = subprocess.run(
        [script, "stats", "--json", "--database-url", seeded],
        capture_output=True,
        text=True,
        check=False,
    )
    by_module = cli("stats", "--json", "--database-url", seeded)
    assert by_script.returncode == by_module.returncode == 0
    assert json.loads(by_script.stdout)["events"] == json.loads(by_module.stdout)["events"] == 300


def test_usage_errors_exit_2_naming_the_culprit(tmp_path):
    no_url = invoke("stats", env={"CQRS_DATABASE_URL": ""})
    assert no_url.exit_code == 2
    assert "--database-url" in no_url.stderr
    assert "CQRS_DATABASE_URL" in no_url.stderr
    unsupported = invoke("stats", "--database-url", f"nosuch://u:{PASSWORD}@host/db")
    assert unsupported.exit_code == 2
    assert "unsupported database URL" in unsupported.stderr
    assert PASSWORD not in unsupported.stderr + unsupported.stdout
    memory = invoke("copy", "--from", "memory://", "--to", f"sqlite:///{tmp_path / 'x.db'}")
    assert memory.exit_code == 2
    assert "--from" in memory.stderr
    unknown = invoke("verify", "--no-such-option")
    assert unknown.exit_code == 2


def test_the_database_url_comes_from_the_environment(seeded):
    result = invoke("stats", "--json", env={"CQRS_DATABASE_URL": seeded})
    assert result.exit_code == 0
    assert json.loads(result.stdout)["events"] == 300


# -- schema -----------------------------------------------------------------------------------


def test_schema_create_and_status_list_applied_and_pending_migrations(sqlite_url, tmp_path):
    created = invoke("schema", "create", "--json", "--database-url", sqlite_url)
    assert created.exit_code == 0
    data = json.loads(created.stdout)
    files = [name for name, _ in ddl_files("sqlite")]
    assert "002_type_position_index.sql" in files
    assert data["applied_now"] == data["applied"] == files
    status = invoke("schema", "status", "--json", "--database-url", sqlite_url)
    assert status.exit_code == 0
    assert json.loads(status.stdout)["pending"] == []
    # An older database: the second file not applied yet.
    with sqlite3.connect(tmp_path / "store.db") as connection:
        connection.execute("DELETE FROM events_schema WHERE name = '002_type_position_index.sql'")
    pending = invoke("schema", "status", "--database-url", sqlite_url)
    assert pending.exit_code == 1
    assert "pending  002_type_position_index.sql" in pending.stdout
    assert "applied  001_events.sql" in pending.stdout
    again = invoke("schema", "create", "--database-url", sqlite_url)
    assert again.exit_code == 0
    assert "applied 002_type_position_index.sql" in again.stdout
    assert invoke("schema", "status", "--database-url", sqlite_url).exit_code == 0


def test_schema_status_does_not_create_anything(tmp_path):
    url = f"sqlite:///{tmp_path / 'new.db'}"
    status = invoke("schema", "status", "--json", "--database-url", url)
    assert status.exit_code == 1
    assert json.loads(status.stdout)["applied"] == []
    with sqlite3.connect(tmp_path / "new.db") as connection:
        tables = connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'"
        ).fetchall()
    assert tables == []


def test_schema_on_postgres(postgres_db):
    url = with_password(postgres_db)
    status = invoke("schema", "status", "--json", "--database-url", url)
    assert status.exit_code == 1
    files = [name for name, _ in ddl_files("postgres")]
    assert "002_global_order.sql" in files
    assert json.loads(status.stdout)["pending"] == files
    created = invoke("schema", "create", "--database-url", url)
    assert created.exit_code == 0
    assert "applied 002_global_order.sql" in created.stdout
    assert PASSWORD not in created.stdout + created.stderr
    assert "postgres:***@" in created.stdout
    assert invoke("schema", "status", "--database-url", url).exit_code == 0


# -- events -----------------------------------------------------------------------------------


def test_events_show_prints_one_aggregates_events(seeded):
    rows, _ = dump(seeded)
    key = ("Account", "agg-1-é")
    expected = [row for row in rows if (row[0], row[1]) == key]
    assert expected
    result = invoke("events", "show", *key, "--json", "--database-url", seeded)
    assert result.exit_code == 0
    shown = json.loads(result.stdout)
    assert [e["sequence"] for e in shown] == list(range(1, len(expected) + 1))
    assert [e["event_id"] for e in shown] == [row[8] for row in expected]
    assert shown[0]["payload"] == json.loads(expected[0][5])
    assert shown[0]["metadata"] == json.loads(expected[0][6])
    assert shown[0]["event_type"] == expected[0][3]
    assert shown[0]["event_version"] == expected[0][4]
    text = invoke("events", "show", *key, "--database-url", seeded)
    assert text.exit_code == 0
    assert f"#{len(expected)}  " in text.stdout
    assert '"note": "ünïcode ✓"' in text.stdout  # the payload, pretty-printed
    assert '"correlation"' in text.stdout  # the metadata
    missing = invoke("events", "show", "Account", "nobody", "--database-url", seeded)
    assert missing.exit_code == 1
    assert "no events for Account 'nobody'" in missing.stdout


def test_events_tail_reads_the_global_stream_after_a_position(seeded):
    rows, _ = dump(seeded)
    everything = invoke("events", "tail", "--json", "--database-url", seeded)
    assert everything.exit_code == 0
    lines = [json.loads(line) for line in everything.stdout.splitlines()]
    assert [line["event_id"] for line in lines] == [row[8] for row in rows]
    positions = [line["position"] for line in lines]
    after = positions[99]
    tail = invoke(
        "events", "tail", "--after", str(after), "--limit", "5", "--json", "--database-url", seeded
    )
    assert [json.loads(line)["position"] for line in tail.stdout.splitlines()] == positions[100:105]
    orders = invoke("events", "tail", "--type", "Order", "--json", "--database-url", seeded)
    got = [json.loads(line)["event_id"] for line in orders.stdout.splitlines()]
    assert got == [row[8] for row in rows if row[0] == "Order"]
    text = invoke("events", "tail", "--limit", "1", "--database-url", seeded)
    assert f"{rows[0][0]} {rows[0][1]} #1  {rows[0][3]} {rows[0][4]}" in text.stdout


def test_events_tail_follow_prints_events_committed_while_it_runs(seeded):
    rows, _ = dump(seeded)

    def later() -> None:
        time.sleep(0.5)
        try:
            seed(seeded, 3, aggregates=1, start=datetime(2030, 1, 1, tzinfo=UTC), prefix="late")
        except BaseException:
            seed(seeded, 3, aggregates=1, prefix="fallback")  # ends the command; fails below
            raise

    writer = threading.Thread(target=later)
    writer.start()
    started = time.monotonic()
    result = invoke(
        "events",
        "tail",
        "--follow",
        "--after",
        "0",
        "--limit",
        str(len(rows) + 3),
        "--json",
        "--database-url",
        seeded,
    )
    writer.join()
    assert result.exit_code == 0
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == len(rows) + 3
    assert [line["timestamp"][:4] for line in lines[-3:]] == ["2030"] * 3
    assert time.monotonic() - started < 30


# -- stats ------------------------------------------------------------------------------------


def test_stats_counts_events_aggregates_and_snapshots_per_type(seeded):
    rows, snapshots = dump(seeded)
    result = invoke("stats", "--json", "--database-url", seeded)
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    for name in ("Account", "Order"):
        of_type = [row for row in rows if row[0] == name]
        assert data["types"][name]["events"] == len(of_type)
        assert data["types"][name]["aggregates"] == len({row[1] for row in of_type})
        assert data["types"][name]["snapshots"] == len([key for key in snapshots if key[0] == name])
    assert data["events"] == len(rows) == 300
    assert data["head_position"] == 300  # SQLite numbers positions 1, 2, ...
    assert data["size_bytes"] > 0
    text = invoke("stats", "--database-url", seeded)
    assert "Account" in text.stdout
    assert "head position 300" in text.stdout
    assert "size on disk" in text.stdout


# -- passwords --------------------------------------------------------------------------------


def test_passwords_never_appear_in_output(postgres_db, seeded):
    url = with_password(postgres_db)
    outputs = []
    for args in (
        ("copy", "--from", seeded, "--to", url),
        ("copy", "--from", seeded, "--to", url, "--json"),
        ("stats", "--database-url", url),
        ("verify", "--database-url", url, "--json"),
        ("events", "tail", "--limit", "3", "--database-url", url),
        ("schema", "status", "--database-url", url),
    ):
        result = invoke(*args)
        assert result.exit_code == 0, result.stderr
        outputs.append(result.stdout + result.stderr)
    # A server that cannot be reached: the driver's message must not carry it either.
    down = f"postgresql://postgres:{PASSWORD}@127.0.0.1:1/nowhere?connect_timeout=1"
    failed = invoke("stats", "--database-url", down)
    assert failed.exit_code == 1
    assert failed.stderr.startswith("cqrs: error:")
    outputs.append(failed.stdout + failed.stderr)
    process = cli("verify", "--database-url", down)
    assert process.returncode == 1
    outputs.append(process.stdout + process.stderr)
    for output in outputs:
        assert PASSWORD not in output
    assert any("postgres:***@" in output for output in outputs)
