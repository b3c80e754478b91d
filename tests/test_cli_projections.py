"""``cqrs projections``: projections named as ``test_cli_projections:build`` (this module,
importable because tests/ is on the path) over a seeded SQLite store."""

# ruff: noqa: F811 - the fixtures imported from test_cli are redefined as parameters

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import msgspec
from test_cli import ROOT, cli, dump, invoke, seeded, sqlite_url  # noqa: F401 - fixtures

import cqrs
from cqrs import EventEnvelope, PersistedEventRepository, SerializedEvent, ViewProjection

SPEC = "test_cli_projections:build"


@dataclass
class Count:
    events: int = 0
    last_sequence: dict[str, int] = field(default_factory=dict)


class RawDecoder:
    """Decodes stored events of one type to envelopes of plain JSON values."""

    def __init__(self, aggregate_type: str) -> None:
        self.aggregate_type = aggregate_type

    def decode(self, row: SerializedEvent) -> EventEnvelope[Any]:
        return EventEnvelope(
            row.aggregate_type,
            row.aggregate_id,
            row.sequence,
            msgspec.json.decode(row.payload),
            msgspec.json.decode(row.metadata),
            row.timestamp,
            UUID(str(row.event_id)),
            row.position,
        )


def count(view: Count, envelope: EventEnvelope[Any]) -> None:
    view.events += 1
    view.last_sequence[envelope.aggregate_id] = envelope.sequence


async def build(repository: PersistedEventRepository) -> list[ViewProjection[Count]]:
    views = repository.view_repository(Count, "cli_counts")
    await views.create_schema()
    return [
        ViewProjection(
            "counts_by_type",
            [RawDecoder("Account"), RawDecoder("Order")],
            views,
            Count,
            key=lambda envelope: envelope.aggregate_type,
            update=count,
        ),
        ViewProjection(
            "opened_orders",
            [RawDecoder("Order")],
            views,
            Count,
            key=lambda envelope: "opened-orders",
            update=count,
            event_types={"Opened"},
        ),
    ]


class Failing:
    name = "always_fails"
    event_types = None

    def __init__(self) -> None:
        self.sources = [RawDecoder("Account")]

    async def handle(self, events: Sequence[EventEnvelope[Any]]) -> None:
        msg = f"cannot handle {len(events)} events"
        raise RuntimeError(msg)


def failing(repository: PersistedEventRepository) -> Failing:
    return Failing()


def _views(url: str) -> dict[str, Count | None]:
    async def load() -> dict[str, Count | None]:
        async with cqrs.connect(url) as repository:
            views = repository.view_repository(Count, "cli_counts")
            await views.create_schema()
            return {key: await views.load(key) for key in ("Account", "Order", "opened-orders")}

    return asyncio.run(load())


def _expected(url: str) -> dict[str, int]:
    rows, _ = dump(url)
    return {
        "Account": sum(row[0] == "Account" for row in rows),
        "Order": sum(row[0] == "Order" for row in rows),
        "opened-orders": sum(row[0] == "Order" and row[3] == "Opened" for row in rows),
    }


def _status(url: str) -> dict[str, dict[str, int]]:
    result = invoke("projections", "status", SPEC, "--json", "--database-url", url)
    assert result.exit_code == 0, result.stderr
    return {row["name"]: row for row in json.loads(result.stdout)}


def test_list_names_each_projection_with_its_types_and_checkpoint(seeded):
    result = invoke("projections", "list", SPEC, "--json", "--database-url", seeded)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == [
        {
            "name": "counts_by_type",
            "types": ["Account", "Order"],
            "event_types": None,
            "kind": "ViewProjection",
            "checkpoint": 0,
        },
        {
            "name": "opened_orders",
            "types": ["Order"],
            "event_types": ["Opened"],
            "kind": "ViewProjection",
            "checkpoint": 0,
        },
    ]
    text = invoke("projections", "list", SPEC, "--database-url", seeded)
    assert "counts_by_type  (ViewProjection)  reads Account, Order: every event" in text.stdout


def test_run_status_reset_and_rebuild(seeded):
    expected = _expected(seeded)
    before = _status(seeded)
    assert before["counts_by_type"]["lag_events"] == 300
    assert before["counts_by_type"]["checkpoint"] == 0
    assert before["opened_orders"]["lag_events"] == expected["Order"]  # events of its types
    lagging = invoke("projections", "status", SPEC, "--fail-on-lag", "10", "--database-url", seeded)
    assert lagging.exit_code == 1
    assert "counts_by_type: checkpoint 0, head 300, lag 300 events, 0 parked" in lagging.stdout

    ran = invoke(
        "projections", "run", SPEC, "--until-caught-up", "--json", "--database-url", seeded
    )
    assert ran.exit_code == 0, ran.stderr
    assert {row["name"]: row["checkpoint"] for row in json.loads(ran.stdout)} == {
        "counts_by_type": 300,
        "opened_orders": _last_order(seeded),
    }
    views = _views(seeded)
    assert {key: view.events if view else 0 for key, view in views.items()} == expected
    after = _status(seeded)
    assert after["counts_by_type"]["lag_events"] == 0
    assert after["counts_by_type"]["checkpoint"] == after["counts_by_type"]["head"] == 300

    reset = invoke(
        "projections", "reset", SPEC, "--name", "counts_by_type", "--yes", "--database-url", seeded
    )
    assert reset.exit_code == 0, reset.stderr
    assert "counts_by_type: views cleared, checkpoint 0" in reset.stderr
    assert _status(seeded)["counts_by_type"]["lag_events"] == 300
    assert _status(seeded)["opened_orders"]["lag_events"] == 0  # not named: untouched
    assert _views(seeded)["Account"] is None

    rebuilt = invoke("projections", "rebuild", SPEC, "--yes", "--database-url", seeded)
    assert rebuilt.exit_code == 0, rebuilt.stderr
    assert "rebuilding" in rebuilt.stderr  # the progress bar
    assert "counts_by_type: stopped at 300" in rebuilt.stdout
    views = _views(seeded)
    assert {key: view.events if view else 0 for key, view in views.items()} == expected


def _last_order(url: str) -> int:
    async def last() -> int:
        async with cqrs.connect(url) as repository:
            return max([e.position async for e in repository.stream_all_events("Order")])

    return asyncio.run(last())


def test_reset_asks_first(seeded):
    refused = invoke("projections", "reset", SPEC, "--database-url", seeded)
    assert refused.exit_code == 1  # aborted at the prompt (no input)
    assert "Reset these projections" in refused.stdout


def test_a_failing_projection_exits_1(seeded):
    result = invoke(
        "projections", "run", "test_cli_projections:failing", "--until-caught-up",
        "--database-url", seeded,
    )  # fmt: skip
    assert result.exit_code == 1
    assert (
        "always_fails: failed at 0 (projection 'always_fails' stopped at position" in result.stdout
    )


def test_bad_specs_are_usage_errors(seeded):
    for spec, message in (
        ("no_colon", "is not module:object"),
        ("no_such_module_here:x", "cannot import 'no_such_module_here'"),
        ("test_cli_projections:nothing", "has no 'nothing'"),
        ("test_cli_projections:SPEC", "gives no projections"),
    ):
        result = invoke("projections", "list", spec, "--database-url", seeded)
        assert result.exit_code == 2, spec
        assert message in result.stderr, result.stderr
    unknown = invoke("projections", "status", SPEC, "--name", "nope", "--database-url", seeded)
    assert unknown.exit_code == 2
    assert "no projection named 'nope'" in unknown.stderr


def test_projections_as_a_process(seeded):
    env = {"PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    ran = cli("projections", "run", SPEC, "--until-caught-up", "--database-url", seeded, env=env)
    assert ran.returncode == 0, ran.stderr
    status = cli("projections", "status", SPEC, "--json", "--database-url", seeded, env=env)
    assert status.returncode == 0
    assert {row["name"]: row["lag_events"] for row in json.loads(status.stdout)} == {
        "counts_by_type": 0,
        "opened_orders": 0,
    }
    listed = cli("projections", "list", SPEC, "--database-url", seeded, env=env)
    assert "opened_orders  (ViewProjection)  reads Order: Opened; checkpoint " in listed.stdout
    reset = cli("projections", "reset", SPEC, "--yes", "--database-url", seeded, env=env)
    assert reset.returncode == 0
    assert "opened_orders: views cleared, checkpoint 0" in reset.stderr
    rebuilt = cli("projections", "rebuild", SPEC, "--yes", "--database-url", seeded, env=env)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "counts_by_type: stopped at 300" in rebuilt.stdout
    views = _views(seeded)
    assert {key: view.events if view else 0 for key, view in views.items()} == _expected(seeded)


def test_every_command_as_a_process(seeded, tmp_path):
    """Each of the other commands once as a real process (projections: above)."""
    target = f"sqlite:///{tmp_path / 'copy.db'}"
    for args, code, text in (
        (("schema", "create", "--database-url", target), 0, "up to date"),
        (("schema", "status", "--database-url", target), 0, "applied  001_events.sql"),
        (("events", "show", "Account", "agg-1-é", "--database-url", seeded), 0, "#1  "),
        (("events", "tail", "--limit", "2", "--database-url", seeded), 0, "#1"),
        (("stats", "--database-url", seeded), 0, "head position 300"),
        (("verify", "--database-url", seeded), 0, "no damage found"),
        (("copy", "--from", seeded, "--to", target), 0, "verified: equal"),
        (("--help",), 0, "projections"),
    ):
        result = cli(*args)
        assert result.returncode == code, (args, result.stderr)
        assert text in result.stdout, (args, result.stdout)
    assert dump(target) == dump(seeded)
