"""The ``cqrs`` command line in-process: ``main`` (and what it says without the ``cli``
extra), how commands end (``run``: exit codes and error lines), what ``events``, ``stats``,
``verify`` and ``copy`` print, and :class:`cqrs.cli.output.Output` (passwords scrubbed, no
markup or highlighting, one line per JSON document, progress rates)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sqlite3
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
import typer
from rich.table import Table
from rich.text import Text
from typer.testing import CliRunner

import cqrs
from cqrs import SerializedEvent, SerializedSnapshot
from cqrs.cli import INSTALL_HINT, main
from cqrs.cli.app import _size, app, require_url, run
from cqrs.cli.capabilities import count_events
from cqrs.cli.output import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, Output
from cqrs.errors import ConfigurationError, CqrsError

WHEN = datetime(2025, 3, 1, 12, 30, 45, 123456, tzinfo=UTC)
IDS = [uuid.UUID(int=n) for n in range(1, 10)]


def invoke(*args: str, env: dict[str, str] | None = None):
    """``cqrs ARGS`` in-process; the result has exit_code, stdout and stderr."""
    return CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)


def row(aggregate_id: str, sequence: int, number: int, **changes: object) -> SerializedEvent:
    fields: dict[str, object] = {
        "aggregate_type": "Account",
        "aggregate_id": aggregate_id,
        "sequence": sequence,
        "event_type": "Opened" if sequence == 1 else "Deposited",
        "event_version": "2.1",
        "payload": '{"amount": 5, "note": "ünï"}',
        "metadata": '{"user": "ann"}',
        "timestamp": WHEN,
        "event_id": IDS[number],
    }
    fields.update(changes)
    return SerializedEvent(**fields)  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path) -> str:
    """A SQLite store: Account a (2 events, a snapshot at 2), Order o (1 event)."""
    url = f"sqlite:///{tmp_path / 'store.db'}"

    async def fill() -> None:
        async with cqrs.connect(url) as repository:
            await repository.persist([row("a", 1, 0), row("a", 2, 1)], None)
            await repository.persist([row("o", 1, 2, aggregate_type="Order")], None)
            await repository.persist(
                [row("a", 3, 3)], SerializedSnapshot("Account", "a", '{"balance": 5}', 3, 1)
            )

    asyncio.run(fill())
    return url


# -- main --------------------------------------------------------------------------------------


def test_main_runs_the_command_line(store, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["cqrs", "stats", "--json", "--database-url", store])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 0
    assert json.loads(capsys.readouterr().out)["events"] == 4


def _hide(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """Make ``names`` (and the modules below them) unimportable, and the command line and
    typer to be imported again."""
    for name in list(sys.modules):
        if name == "cqrs.cli.app" or any(
            name == top or name.startswith(f"{top}.") for top in ("typer", *names)
        ):
            monkeypatch.delitem(sys.modules, name)
    for name in names:
        monkeypatch.setitem(sys.modules, name, None)


class _TyperWithoutClick:
    """An import hook: typer is there but click, which older typers import, is not."""

    @staticmethod
    def find_spec(name: str, *_: object) -> None:
        if name == "typer":
            msg = "No module named 'click'"
            raise ModuleNotFoundError(msg, name="click")


@pytest.mark.parametrize("missing", ["typer", "rich", "rich.json", "click"])
def test_without_the_extra_main_says_what_to_install_and_exits_2(missing, monkeypatch, capsys):
    if missing == "click":
        _hide(monkeypatch)
        monkeypatch.setattr(sys, "meta_path", [_TyperWithoutClick(), *sys.meta_path])
    else:
        _hide(monkeypatch, missing)
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2
    assert capsys.readouterr().err == INSTALL_HINT + "\n"
    assert INSTALL_HINT == "cqrs: the command line needs its extra: pip install 'cqrs-es[cli]'"


def test_another_missing_module_is_not_blamed_on_the_extra(monkeypatch, capsys):
    monkeypatch.delitem(sys.modules, "cqrs.cli.app")
    monkeypatch.setitem(sys.modules, "cqrs.cli.copying", None)
    with pytest.raises(ImportError) as raised:
        main()
    assert raised.value.name == "cqrs.cli.copying"
    assert capsys.readouterr().err == ""


# -- require_url and run -----------------------------------------------------------------------


def test_require_url_names_the_option():
    assert require_url("sqlite:///x.db") == "sqlite:///x.db"
    with pytest.raises(typer.BadParameter) as raised:
        require_url(None)
    assert raised.value.param_hint == "--database-url"
    assert str(raised.value) == "no database URL: pass --database-url or set $CQRS_DATABASE_URL"
    with pytest.raises(typer.BadParameter) as other:
        require_url("", "--from")
    assert other.value.param_hint == "--from"


def test_a_command_without_a_url_is_a_usage_error_naming_the_option():
    result = invoke("verify", env={"CQRS_DATABASE_URL": ""})
    assert result.exit_code == 2
    assert (
        "Invalid value for --database-url: no database URL: pass --database-url or set "
        "$CQRS_DATABASE_URL" in " ".join(result.stderr.split())
    )


def _run(work, capsys, **options: bool) -> tuple[int, str, str]:
    with pytest.raises(typer.Exit) as exited:
        run(Output(), work, **options)
    captured = capsys.readouterr()
    return exited.value.exit_code, captured.out, captured.err


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ConfigurationError("bad spec 'x'"), EXIT_USAGE),
        (ValueError("bad spec 'x'"), EXIT_USAGE),
        (CqrsError("bad spec 'x'"), EXIT_FAILURE),
        (OSError("bad spec 'x'"), EXIT_FAILURE),
    ],
    ids=["configuration", "value", "cqrs", "os"],
)
def test_run_turns_errors_into_one_line_and_an_exit_code(error, code, capsys):
    async def work() -> int:
        raise error

    assert _run(work, capsys) == (code, "", "cqrs: error: bad spec 'x'\n")


def test_run_exits_with_the_commands_code(capsys):
    async def work() -> int:
        await asyncio.sleep(0)
        return 1

    async def fine() -> int:
        return 0

    assert _run(work, capsys) == (1, "", "")
    assert _run(fine, capsys) == (0, "", "")


def test_ctrl_c_is_a_failure_unless_it_is_the_way_to_stop(capsys):
    async def work() -> int:
        raise KeyboardInterrupt

    assert _run(work, capsys) == (EXIT_FAILURE, "", "interrupted\n")
    assert _run(work, capsys, interrupt_ok=True) == (EXIT_OK, "", "interrupted\n")


def test_schema_status_opens_without_creating_the_schema(tmp_path):
    path = tmp_path / "new.db"
    result = invoke("schema", "status", "--database-url", f"sqlite:///{path}")
    assert result.exit_code == 1
    assert "pending  001_events.sql" in result.stdout
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT name FROM sqlite_master").fetchall() == []


# -- events ------------------------------------------------------------------------------------


def test_events_show_json_has_every_field(store):
    result = invoke("events", "show", "Account", "a", "--json", "--database-url", store)
    assert result.exit_code == 0
    shown = json.loads(result.stdout)
    assert shown[0] == {
        "position": 1,
        "aggregate_type": "Account",
        "aggregate_id": "a",
        "sequence": 1,
        "event_type": "Opened",
        "event_version": "2.1",
        "timestamp": "2025-03-01T12:30:45.123456+00:00",
        "event_id": str(IDS[0]),
        "metadata": {"user": "ann"},
        "payload": {"amount": 5, "note": "ünï"},
    }
    assert [event["position"] for event in shown] == [1, 2, 4]


def test_events_tail_lines_show_position_time_aggregate_and_type(store):
    result = invoke("events", "tail", "--database-url", store)
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [
        "           1  2025-03-01T12:30:45.123+00:00  Account a #1  Opened 2.1",
        "           2  2025-03-01T12:30:45.123+00:00  Account a #2  Deposited 2.1",
        "           3  2025-03-01T12:30:45.123+00:00  Order o #1  Opened 2.1",
        "           4  2025-03-01T12:30:45.123+00:00  Account a #3  Deposited 2.1",
    ]


def test_undecodable_payloads_are_shown_as_text(store, tmp_path):
    with sqlite3.connect(tmp_path / "store.db") as connection:
        connection.execute("UPDATE events SET payload = ? WHERE position = 1", (b"\xff{",))
        connection.execute("UPDATE events SET payload = 'not json' WHERE position = 2")
        connection.execute("UPDATE events SET metadata = ? WHERE position = 2", (b"\xfe",))
    result = invoke("events", "tail", "--json", "--limit", "2", "--database-url", store)
    assert result.exit_code == 0
    first, second = (json.loads(line) for line in result.stdout.splitlines())
    assert first["payload"] == "\ufffd{"
    assert first["metadata"] == {"user": "ann"}
    assert second["payload"] == "not json"
    assert second["metadata"] == "\ufffd"
    shown = invoke("events", "show", "Account", "a", "--database-url", store)
    assert shown.exit_code == 0
    assert "not json" in shown.stdout


# -- stats and verify ------------------------------------------------------------------------


def test_sizes_use_binary_units():
    assert _size(None) == "unknown"
    assert _size(0) == "0 B"
    assert _size(1023) == "1,023 B"
    assert _size(1024) == "1.0 KiB"
    assert _size(1536) == "1.5 KiB"
    assert _size(1024 * 1024 - 1) == "1,024.0 KiB"
    assert _size(1024 * 1024) == "1.0 MiB"
    assert _size(10 * 1024 * 1024 + 512 * 1024) == "10.5 MiB"
    assert _size(5 * 1024**3) == "5.0 GiB"
    assert _size(3 * 1024**4) == "3,072.0 GiB"


def test_stats_text_ends_with_the_totals(store):
    result = invoke("stats", "--database-url", store)
    assert result.exit_code == 0
    last = result.stdout.splitlines()[-1]
    assert re.fullmatch(
        r"events 4  aggregates 2  snapshots 1  head position 4  size on disk [\d.,]+ KiB", last
    )
    memory = invoke("stats", "--database-url", "memory://")
    assert memory.stdout.splitlines()[-1] == (
        "events 0  aggregates 0  snapshots 0  head position 0  size on disk unknown"
    )


def test_verify_counts_in_words(store):
    result = invoke("verify", "--database-url", store)
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [
        f"{store}: 4 events, 2 aggregates, 1 snapshot checked",
        "no damage found",
    ]
    orders = invoke("verify", "--type", "Order", "--database-url", store)
    assert orders.stdout.splitlines()[0] == f"{store}: 1 event, 1 aggregate, 0 snapshots checked"


def test_verify_lists_the_damage(store, tmp_path):
    with sqlite3.connect(tmp_path / "store.db") as connection:
        connection.execute("DELETE FROM events WHERE position = 2")
    result = invoke("verify", "--database-url", store)
    assert result.exit_code == 1
    assert result.stdout.splitlines()[1:] == [
        "  gap: 1 (an aggregate's sequences skip a number (or do not start at 1))",
        "  [gap] Account 'a' sequence 3 position 4: sequence(s) 2 missing",
    ]


# -- copy --------------------------------------------------------------------------------------


def test_copy_prints_what_it_did_and_whether_both_sides_agree(store, tmp_path):
    target = f"sqlite:///{tmp_path / 'target.db'}"
    result = invoke("copy", "--from", store, "--to", target)
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"copied {store} -> {target}"
    assert re.fullmatch(
        r"  4 events read, 4 written, 0 already there; 1 snapshots; [\d.]+ s, [\d,]+ events/s",
        lines[1],
    )
    checksum = re.fullmatch(r"  source: 4 events, checksum ([0-9a-f]{32})", lines[2])
    assert checksum
    assert lines[3] == f"  target: 4 events, checksum {checksum[1]}"
    assert lines[4:] == ["  verified: equal"]

    async def more() -> None:
        async with cqrs.connect(store) as repository:
            await repository.persist([row("a", 4, 4)], None)

    asyncio.run(more())
    again = invoke("copy", "--from", store, "--to", target)
    assert again.exit_code == 0
    assert again.stdout.splitlines()[0] == (
        f"copied {store} -> {target} (resumed after source position 4)"
    )
    assert again.stdout.splitlines()[1].startswith(
        "  1 events read, 1 written, 0 already there; 1 snapshots; "
    )
    data = json.loads(invoke("copy", "--from", store, "--to", target, "--json").stdout)
    assert data["resumed_after"] == 5
    assert data["equal"] is True


def test_copy_into_a_target_with_other_events_is_not_equal(store, tmp_path):
    target = f"sqlite:///{tmp_path / 'target.db'}"

    async def other() -> None:
        async with cqrs.connect(target) as repository:
            await repository.persist([row("z", 1, 8)], None)

    asyncio.run(other())
    result = invoke("copy", "--from", store, "--to", target)
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[1].startswith("  4 events read, 4 written, 0 already there; ")
    assert lines[3].startswith("  target: 5 events, checksum ")
    assert lines[-1] == "  NOT EQUAL: the target differs"


# -- capabilities ------------------------------------------------------------------------------


async def test_count_events_asks_the_backend_if_it_can_count(store):
    async with cqrs.connect(store) as repository:
        assert await count_events(repository, None, None) == 4
        assert await count_events(repository, "Account", None) == 3
        assert await count_events(repository, "Account", 1) == 2
        assert await count_events(repository, None, 3) == 1
    async with cqrs.connect("memory://") as memory:
        assert await count_events(memory, None, None) is None


# -- Output ------------------------------------------------------------------------------------


def test_output_is_text_unless_json_is_asked_for():
    assert Output().json is False
    assert Output(json_output=True).json is True


def test_passwords_of_the_urls_given_and_in_any_user_part_are_scrubbed():
    output = Output(
        urls=[
            "postgresql://ann:p%40ss@db/x?sslmode=require&sslpassword=ssl-secret&user=bob",
            None,  # type: ignore[list-item]
        ]
    )
    output.add_url("mongodb://h/db?Token=tok-secret&password=")
    output.add_url(None)
    output.add_url("")
    text = (
        "p%40ss p@ss ssl-secret tok-secret require bob "
        "mysql://root:other-pw@h/db redis://:only-pw@h"
    )
    assert output.scrub(text) == (
        "*** *** *** *** require bob mysql://root:***@h/db redis://:***@h"
    )
    assert output.url("postgresql://ann:p%40ss@db/x") == "postgresql://ann:***@db/x"
    Output(urls=["postgresql://u:p@[::1/db"])  # an unparsable URL brings no secrets


def test_a_secret_inside_a_longer_one_does_not_leave_part_of_it():
    output = Output(urls=["postgresql://u:abc@h/db?token=b"])
    assert output.scrub("abc b") == "*** ***"


def test_print_writes_one_literal_scrubbed_line(capsys):
    output = Output(urls=["postgresql://u:s3cret@h/db"])
    long = "x" * 300
    output.print(f"[bold]s3cret[/bold] {long}")
    output.print()
    assert capsys.readouterr().out == f"[bold]***[/bold] {long}\n\n"


def test_print_renderable_scrubs_each_line(capsys):
    output = Output(urls=["postgresql://u:s3cret@h/db"])
    table = Table("name", "value")
    table.add_row("[red]url", "postgresql://u:s3cret@h/db")
    output.print_renderable(table)
    output.print_renderable(Text("[b]not markup[/b] s3cret"))
    out = capsys.readouterr().out
    assert "s3cret" not in out
    assert "postgresql://u:***@h/db" in out
    assert out.splitlines()[-1] == "[b]not markup[/b] ***"


def test_emit_json_writes_one_line_as_given(capsys):
    output = Output(urls=["postgresql://u:s3cret@h/db"])
    data = {"note": "ünï [bold]x[/bold] " + "y" * 200, "url": "postgresql://u:s3cret@h/db"}
    output.emit_json({**data, "when": WHEN})
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert "ünï" in out
    assert json.loads(out) == {
        "note": data["note"],
        "url": "postgresql://u:***@h/db",
        "when": "2025-03-01 12:30:45.123456+00:00",
    }


def test_errors_and_notes_go_to_stderr_literal_and_scrubbed(capsys):
    output = Output(urls=["postgresql://u:s3cret@h/db"])
    output.error("[bold]cannot[/bold] reach postgresql://u:s3cret@h/db " + "z" * 200)
    output.note("[i]note[/i] s3cret " + "n" * 200)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        "cqrs: error: [bold]cannot[/bold] reach postgresql://u:***@h/db " + "z" * 200,
        "[i]note[/i] *** " + "n" * 200,
    ]


def test_nothing_is_highlighted_on_a_colour_terminal(monkeypatch, capsys):
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.delenv("NO_COLOR", raising=False)
    output = Output()
    output.print("1 2.5 True None http://h/x")
    output.emit_json({"n": 1, "b": True, "s": "http://h/x"})
    output.error("code 1 at http://h/x")
    output.note("took 1.5 s")
    table = Table("n")
    table.add_row("42 True")
    output.print_renderable(table)
    captured = capsys.readouterr()
    assert "\x1b[" not in captured.err
    lines = captured.out.splitlines()
    assert lines[:2] == ["1 2.5 True None http://h/x", '{"n": 1, "b": true, "s": "http://h/x"}']
    assert not any("\x1b[3" in line for line in lines[2:])  # no colour in the table's cells


def test_warnings_of_cqrs_loggers_go_to_stderr_scrubbed(capsys):
    output = Output(urls=["postgresql://u:s3cret@h/db"])
    with output.logging():
        logging.getLogger("cqrs.test").warning("cannot reach %s (%d)", "postgresql://u:s3cret@h", 5)
        logging.getLogger("cqrs.test").info("not shown")
    logging.getLogger("cqrs.test").warning("after the command")
    err = capsys.readouterr().err
    assert "cqrs: cqrs.test: WARNING: cannot reach postgresql://u:***@h (5)\n" in err
    assert "not shown" not in err
    assert "after the command" not in err


def _rate(err: str, description: str) -> str:
    """The rate column of the task's last line: what stands before the elapsed time."""
    line = [line for line in err.splitlines() if line.startswith(description)][-1]
    found = re.search(r" (\S+(?: events/s)?) +\d+:\d\d:\d\d", line)
    assert found, line
    return found[1]


def test_a_finished_tasks_rate_is_that_of_its_run(capsys):
    output = Output()
    with output.progress() as progress:
        began = time.perf_counter()
        done = progress.add_task("finished", total=10)
        progress.advance(done, 10)
        took = time.perf_counter() - began
        time.sleep(0.3)  # the display stays open: the rate must not fall meanwhile
    finished = _rate(capsys.readouterr().err, "finished")
    assert finished.endswith(" events/s")
    assert int(finished.split()[0].replace(",", "")) >= int(10 / took) > 1000


def test_a_running_tasks_rate_is_its_speed_or_a_dash_before_it_has_one(capsys):
    output = Output()
    with output.progress() as progress:
        progress.add_task("waiting", total=None)
        moving = progress.add_task("moving", total=None)
        progress.advance(moving, 5)
        time.sleep(0.05)
        progress.advance(moving, 5)
    err = capsys.readouterr().err
    assert _rate(err, "waiting") == "-"
    moving_rate = _rate(err, "moving")
    assert moving_rate.endswith(" events/s")
    assert 1 <= int(moving_rate.split()[0].replace(",", "")) <= 100  # 5 events in >= 0.05 s


def test_progress_rates_in_the_speed_colour(monkeypatch, capsys):
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.delenv("NO_COLOR", raising=False)
    output = Output()
    with output.progress() as progress:
        task = progress.add_task("finished", total=10)
        progress.advance(task, 10)
    err = capsys.readouterr().err
    assert re.search(r"\x1b\[31m[\d,]+ events/s\x1b\[0m", err)
