"""Timing, alternation, medians, the markdown table, the JSON report and the command line.

For each backend and workload the harness opens the sides (framework, raw, peer: those that
exist there), seeds each one untimed, then runs ``warmups + repetitions`` rounds. A round is
the workload once per side, cut into steps of a few milliseconds (a few commands or loads)
that run interleaved: step 1 of A, B, C, then step 2 of A, C, B... (each step takes the next
of every order of the sides, in a cycle where no side always goes first and each runs right
after each other side as often: a rotation would put A after C two times in three, and what
C leaves behind, A would pay for more often than B). On a shared machine the load
changes from one second to the next; interleaving small steps makes every side run under the
same conditions. A side's rate in a round is its units over the time of its own steps; its
result is the median over the counted rounds (warm-up rounds are not counted); ``ratio_raw =
framework / raw`` and ``ratio_peer = framework / peer`` (null when either is not measured).
Everything runs in one process, on one event loop; the garbage collector runs between
rounds. The per-round rates are in the JSON's ``samples``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import os
import platform
import pstats
import secrets
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.targets import (
    MemoryTarget,
    MongoTarget,
    MysqlTarget,
    PostgresTarget,
    SqliteTarget,
    Target,
    version,
)
from benchmarks.workloads import (
    SIDES,
    SNAPSHOT_EVERY,
    UNITS,
    WORKLOADS,
    Operation,
    PerRound,
    Side,
    Sizes,
    prepare,
)

__all__ = ["FULL", "QUICK", "Report", "bars", "main", "markdown", "run"]

QUICK = Sizes(
    commit_1=40,
    commit_10=16,
    load_100=30,
    load_1000=4,
    load_snapshot=100,
    concurrent_8=80,
    repetitions=35,
    catchup_events=2_000,
    view_events=100,
)
"""``--quick``: 1-2 minutes on 2 cores for memory, SQLite and PostgreSQL."""

FULL = Sizes(
    commit_1=100,
    commit_10=40,
    load_100=75,
    load_1000=10,
    load_snapshot=250,
    concurrent_8=200,
    repetitions=41,
)
"""The default: the same work in more, larger rounds (for the README's table)."""

DEFAULT_BACKENDS = ("memory", "sqlite", "postgres")
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_MYSQL_URL = "mysql://root@127.0.0.1:3306/test"


@dataclass
class Report:
    """What a run measured: rows for the table and the JSON, plus the raw samples."""

    machine: dict[str, object]
    rows: list[dict[str, object]] = field(default_factory=list)
    samples: list[dict[str, object]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    errors: list[dict[str, str]] = field(default_factory=list)

    def as_json(self) -> dict[str, object]:
        """``{"machine", "rows", "bars", "samples", "skipped", "errors"}``."""
        return {
            "machine": self.machine,
            "rows": self.rows,
            "bars": bars(self.rows),
            "samples": self.samples,
            "skipped": self.skipped,
            "errors": self.errors,
        }


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return round(numerator / denominator, 3)


_THREE = ((0, 1, 2), (0, 2, 1), (2, 1, 0), (1, 0, 2), (1, 2, 0), (2, 0, 1))
"""Every order of three sides, in a cycle where each side runs right after each other side
equally often (three times in six steps, counting from one step to the next)."""


def _orders(names: list[str]) -> list[list[str]]:
    """The orders the steps take in turn: for three sides :data:`_THREE`; otherwise the
    rotations (with two sides each follows the other as often)."""
    if len(names) == 3:  # framework, raw and peer
        return [[names[i] for i in order] for order in _THREE]
    return [names[shift:] + names[:shift] for shift in range(max(len(names), 1))]


class _WorkloadRun:
    """One workload on one target: its sides, their per-round rates, their failures.

    A raw or peer side that fails is reported in ``errors`` and left out (its column is
    null); a framework failure propagates.
    """

    def __init__(
        self,
        target: Target,
        workload: str,
        sizes: Sizes,
        profiler: cProfile.Profile | None,
        errors: list[dict[str, str]],
    ) -> None:
        self.target, self.workload, self.sizes = target, workload, sizes
        self.profiler, self.errors = profiler, errors
        sides = target.sides(workload, SNAPSHOT_EVERY.get(workload))
        names = SIDES.get(workload)
        self.sides: list[Side] = [s for s in sides if names is None or s.name in names]
        self.opened: list[Side] = []
        self.rates: dict[str, list[float]] = {}
        self.preparers: dict[str, PerRound] = {}

    def failed(self, side: Side, error: Exception) -> None:
        if side.name == "framework":
            raise error
        where = f"{self.target.name}/{self.workload}/{side.name}"
        _log(f"  {where}: FAILED, left out: {error!r}")
        self.errors.append(
            {
                "backend": self.target.name,
                "workload": self.workload,
                "side": side.name,
                "error": repr(error),
            }
        )
        self.preparers.pop(side.name, None)
        self.rates.pop(side.name, None)

    async def seed(self) -> None:
        for side in self.sides:
            started = time.perf_counter()
            try:
                await side.open()
                self.opened.append(side)
                self.preparers[side.name] = await prepare(self.workload, side, self.sizes)
            except Exception as error:  # noqa: BLE001 - reported by failed()
                self.failed(side, error)
                continue
            self.rates[side.name] = []
            _log(
                f"  {self.target.name}/{self.workload}/{side.name}: seeded in "
                f"{time.perf_counter() - started:.1f}s"
            )

    async def rounds(self) -> None:
        sizes = self.sizes
        for round_index in range(sizes.warmups + sizes.repetitions):
            rates = await self.round(round_index)
            if round_index >= sizes.warmups:
                for name, rate in rates.items():
                    self.rates[name].append(rate)

    async def round(self, index: int) -> dict[str, float]:
        """Prepare every side's steps (untimed), then run them interleaved: step 1 of
        every side, step 2 of every side..., each step in the next of every order of the
        sides (see the module docstring). Return each side's units per second over its
        steps."""
        steps = await self._steps(index)
        elapsed = dict.fromkeys(steps, 0.0)
        units = dict.fromkeys(steps, 0)
        profiler = self.profiler if index >= self.sizes.warmups else None
        gc.collect()
        for step in range(max((len(s) for s in steps.values()), default=0)):
            orders = _orders(list(steps))
            for name in orders[(index + step) % len(orders)]:
                if step >= len(steps[name]):
                    continue
                timed = await self._time(name, steps[name][step], profiler)
                if timed is None:
                    del steps[name]
                    continue
                elapsed[name] += timed[0]
                units[name] += timed[1]
        return {name: units[name] / elapsed[name] for name in steps if elapsed[name] > 0}

    async def _steps(self, index: int) -> dict[str, list[Operation]]:
        steps: dict[str, list[Operation]] = {}
        for side in self.sides:
            per_round = self.preparers.get(side.name)
            if per_round is None:
                continue
            try:
                side_steps = await per_round(index)
            except Exception as error:  # noqa: BLE001 - reported by failed()
                self.failed(side, error)
                continue
            if side_steps is None:
                self.preparers.pop(side.name)
                self.rates.pop(side.name)
            else:
                steps[side.name] = side_steps
        return steps

    async def _time(
        self, name: str, operation: Operation, profiler: cProfile.Profile | None
    ) -> tuple[float, int] | None:
        """(seconds, units) of one step, or None if it failed (reported, side left out)."""
        profiling = profiler is not None and name == "framework"
        if profiling:
            profiler.enable()  # type: ignore[union-attr]
        started = time.perf_counter()
        try:
            done = await operation()
        except Exception as error:  # noqa: BLE001 - reported by failed()
            self.failed(self._side(name), error)
            return None
        finally:
            if profiling:
                profiler.disable()  # type: ignore[union-attr]
        return time.perf_counter() - started, done

    def _side(self, name: str) -> Side:
        return next(side for side in self.sides if side.name == name)

    async def close(self) -> None:
        for side in self.opened:
            await side.close()


async def _measure(
    target: Target,
    workload: str,
    sizes: Sizes,
    profiler: cProfile.Profile | None,
    errors: list[dict[str, str]],
) -> tuple[dict[str, object], list[dict[str, object]]]:
    run = _WorkloadRun(target, workload, sizes, profiler, errors)
    try:
        await run.seed()
        await run.rounds()
    finally:
        await run.close()
    rates = run.rates
    medians = {name: statistics.median(values) for name, values in rates.items() if values}
    framework = medians.get("framework")
    raw, peer = medians.get("raw"), medians.get("peer")
    row: dict[str, object] = {
        "backend": target.name,
        "workload": workload,
        "unit": UNITS[workload],
        "framework": None if framework is None else round(framework, 1),
        "raw": None if raw is None else round(raw, 1),
        "peer": None if peer is None else round(peer, 1),
        "ratio_raw": _ratio(framework, raw),
        "ratio_peer": _ratio(framework, peer),
    }
    samples: list[dict[str, object]] = [
        {
            "backend": target.name,
            "workload": workload,
            "side": name,
            "rates": [round(value, 1) for value in values],
        }
        for name, values in rates.items()
    ]
    return row, samples


async def _measure_with_retry(
    target: Target,
    workload: str,
    sizes: Sizes,
    profiler: cProfile.Profile | None,
    report: Report,
) -> tuple[dict[str, object], list[dict[str, object]]] | None:
    """Measure; if the framework side fails (on a shared server another session may kill
    connections), try once more on new tables; report the error if that fails too."""
    for attempt in (1, 2):
        errors: list[dict[str, str]] = []
        try:
            measured = await _measure(target, workload, sizes, profiler, errors)
        except Exception as error:  # noqa: BLE001 - retried once, then reported
            _log(f"{target.name}/{workload}: FAILED (attempt {attempt}): {error!r}")
            if attempt == 1:
                continue
            report.errors.append(
                {
                    "backend": target.name,
                    "workload": workload,
                    "side": "framework",
                    "error": repr(error),
                }
            )
            return None
        report.errors.extend(errors)
        return measured
    return None  # pragma: no cover - the loop returns


def _targets(options: argparse.Namespace, prefix: str) -> list[Target]:
    targets: list[Target] = []
    for name in options.backends:
        if name == "memory":
            targets.append(MemoryTarget())
        elif name == "sqlite":
            targets.append(SqliteTarget(options.sqlite_dir))
        elif name == "postgres":
            targets.append(PostgresTarget(options.postgres_url, prefix))
        elif name == "mongodb":
            targets.append(MongoTarget(options.mongodb_url, prefix))
        elif name == "mysql":
            targets.append(MysqlTarget(options.mysql_url, prefix))
    return targets


def _machine(options: argparse.Namespace, sizes: Sizes) -> dict[str, object]:
    try:
        affinity: int | None = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        affinity = None
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "cpu_model": _cpu_model(),
        "mode": "quick" if options.quick else "full",
        "sizes": asdict(sizes),
        "cqrs_es": version("cqrs-es"),
        "msgspec": version("msgspec"),
        "eventsourcing": version("eventsourcing"),
    }


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


async def run(options: argparse.Namespace) -> Report:
    """Run the benchmark described by parsed command-line ``options``."""
    sizes: Sizes = options.sizes
    prefix = f"bench_{os.getpid()}_{secrets.token_hex(2)}"
    report = Report(_machine(options, sizes))
    for target in _targets(options, prefix):
        reason = await target.unavailable()
        if reason is not None:
            _log(f"{target.name}: skipped ({reason})")
            report.skipped[target.name] = reason
            continue
        report.machine.update(await target.describe())
        try:
            for workload in options.workloads:
                _log(f"{target.name}/{workload} ...")
                profiler = cProfile.Profile() if options.profile else None
                started = time.perf_counter()
                measured = await _measure_with_retry(target, workload, sizes, profiler, report)
                if measured is None:
                    continue
                row, samples = measured
                _log(f"{target.name}/{workload}: {time.perf_counter() - started:.1f}s {row}")
                report.rows.append(row)
                report.samples.extend(samples)
                if profiler is not None:
                    _dump_profile(profiler, Path(options.profile), target.name, workload)
        finally:
            await _cleanup(target, report)
    return report


async def _cleanup(target: Target, report: Report) -> None:
    """Drop what the run created; a server that is restarting gets three tries."""
    for attempt in range(3):
        try:
            await target.cleanup()
        except Exception as error:  # noqa: BLE001 - reported below, the run goes on
            if attempt < 2:
                await asyncio.sleep(2)
                continue
            _log(f"{target.name}: cleanup FAILED, some benchmark tables remain: {error!r}")
            report.errors.append(
                {"backend": target.name, "workload": "-", "side": "cleanup", "error": repr(error)}
            )
        return


def _dump_profile(profiler: cProfile.Profile, directory: Path, backend: str, workload: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{backend}_{workload}.prof"
    profiler.dump_stats(path)
    _log(f"  profile of the framework side: {path}")


def _number(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value < 100:
        return f"{value:,.1f}"
    return f"{value:,.0f}"


def _ratio_text(value: object) -> str:
    return "-" if value is None else f"{value:.2f}"


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a markdown table."""
    lines = [
        "| backend | workload | unit | framework | raw | peer | framework/raw | framework/peer |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    lines.extend(
        f"| {row['backend']} | {row['workload']} | {row['unit']} | {_number(row['framework'])} "
        f"| {_number(row['raw'])} | {_number(row['peer'])} | {_ratio_text(row['ratio_raw'])} "
        f"| {_ratio_text(row['ratio_peer'])} |"
        for row in rows
    )
    return "\n".join(lines)


RAW_BAR = ("commit_1", "commit_10", "load_100", "load_1000", "load_snapshot")
PEER_BAR = ("commit_1", "commit_10", "load_1000")


def bars(rows: Sequence[dict[str, Any]]) -> list[dict[str, object]]:
    """The bars of DESIGN.md section 7 that these rows can check, each with its outcome.

    ``ceiling`` is the best the framework could score on this database with this design:
    1.0 for ``ratio_raw`` and ``raw / peer`` for ``ratio_peer`` (a framework as fast as
    the raw driver), so a bar above its ceiling is out of reach here whatever the code does.
    """
    by_key = {(row["backend"], row["workload"]): row for row in rows}
    results: list[dict[str, object]] = []

    def check(
        bar: str,
        row: dict[str, Any],
        value: float | None,
        minimum: float,
        ceiling: float | None,
    ) -> None:
        results.append(
            {
                "bar": bar,
                "backend": row["backend"],
                "workload": row["workload"],
                "value": value,
                "minimum": minimum,
                "ceiling": ceiling,
                "ok": None if value is None else value >= minimum,
            }
        )

    for backend in ("sqlite", "postgres"):
        for workload in RAW_BAR:
            row = by_key.get((backend, workload))
            if row is not None:
                check("ratio_raw >= 0.8", row, row["ratio_raw"], 0.8, 1.0)
        for workload in PEER_BAR:
            row = by_key.get((backend, workload))
            if row is not None:
                ceiling = _ratio(row["raw"], row["peer"])
                check("ratio_peer >= 2.0", row, row["ratio_peer"], 2.0, ceiling)
    many, one = by_key.get(("postgres", "concurrent_8")), by_key.get(("postgres", "commit_1"))
    if many is not None and one is not None:
        ceiling = _ratio(many["raw"], one["raw"])
        scaling = _ratio(many["framework"], one["framework"])
        check("concurrent_8 / commit_1 > 1 (writers scale)", many, scaling, 1.0, ceiling)
    _round_two_bars(by_key, check)
    _projection_bars(by_key, check)
    memory = by_key.get(("memory", "commit_10"))
    if memory is not None:
        check("events/s >= 100k", memory, memory["framework"], 100_000.0, None)
    return results


def _round_two_bars(
    by_key: dict[tuple[Any, Any], dict[str, Any]],
    check: Callable[[str, dict[str, Any], float | None, float, float | None], None],
) -> None:
    """Issue 18: one-hop snapshot loads and group commit on SQLite, PostgreSQL loads."""
    snapshot = by_key.get(("sqlite", "load_snapshot"))
    if snapshot is not None:
        check("ratio_raw >= 0.9 (one hop)", snapshot, snapshot["ratio_raw"], 0.9, 1.0)
        ceiling = _ratio(snapshot["raw"], snapshot["peer"])
        check("ratio_peer > 1.0", snapshot, snapshot["ratio_peer"], 1.001, ceiling)
    many, one = by_key.get(("sqlite", "concurrent_8")), by_key.get(("sqlite", "commit_1"))
    if many is not None and one is not None:
        scaling = _ratio(many["framework"], one["framework"])
        check("concurrent_8 / commit_1 >= 3 (group commit)", many, scaling, 3.0, None)
    for workload in ("load_100", "load_1000", "load_snapshot"):
        row = by_key.get(("postgres", workload))
        if row is not None:
            check("ratio_raw >= 0.85 (loads)", row, row["ratio_raw"], 0.85, 1.0)


def _projection_bars(
    by_key: dict[tuple[Any, Any], dict[str, Any]],
    check: Callable[[str, dict[str, Any], float | None, float, float | None], None],
) -> None:
    for backend in ("sqlite", "postgres"):
        row = by_key.get((backend, "catchup_10k"))
        if row is not None:
            check("ratio_raw >= 0.8 (catch-up)", row, row["ratio_raw"], 0.8, 1.0)
    upserts = by_key.get(("postgres", "view_upsert"))
    if upserts is not None:
        check("events/s >= 10k", upserts, upserts["framework"], 10_000.0, None)


def _bars_text(results: Sequence[dict[str, Any]]) -> str:
    lines = []
    for result in results:
        mark = {True: "PASS", False: "FAIL", None: "n/a "}[result["ok"]]
        value = result["value"]
        value = "-" if value is None else f"{value:,.0f}" if value >= 1000 else f"{value:.2f}"
        ceiling = result["ceiling"]
        limit = "" if ceiling is None else f"; ceiling with raw speed: {ceiling:.2f}"
        lines.append(
            f"- {mark} {result['backend']} {result['workload']}: {result['bar']} "
            f"(got {value}{limit})"
        )
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=(
            "Side-by-side benchmarks: CqrsFramework vs the raw driver vs the eventsourcing "
            "package, alternating in one process; medians."
        ),
    )
    parser.add_argument("--quick", action="store_true", help="35 short rounds (1-2 minutes)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument(
        "--backends",
        default=",".join(DEFAULT_BACKENDS),
        help="comma-separated: memory,sqlite,postgres,mongodb,mysql (default: memory,sqlite,"
        "postgres; mongodb needs --mongodb-url)",
    )
    parser.add_argument(
        "--workloads", default=",".join(WORKLOADS), help="comma-separated workload ids"
    )
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("CQRS_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL),
        help="default: $CQRS_TEST_POSTGRES_URL or " + DEFAULT_POSTGRES_URL,
    )
    parser.add_argument(
        "--mysql-url",
        default=os.environ.get("CQRS_TEST_MYSQL_URL", DEFAULT_MYSQL_URL),
        help="MySQL or MariaDB; default: $CQRS_TEST_MYSQL_URL or " + DEFAULT_MYSQL_URL,
    )
    parser.add_argument(
        "--mongodb-url",
        help="a real mongod replica set (never defaulted: test servers are not benchmarked)",
    )
    parser.add_argument("--repetitions", type=int, help="counted rounds (overrides the mode)")
    parser.add_argument("--sqlite-dir", help="where the SQLite files go (default: the temp dir)")
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="cProfile the framework side's counted runs; one .prof per backend and workload",
    )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and check the command line (see ``python -m benchmarks --help``)."""
    parser = _parser()
    options = parser.parse_args(argv)
    options.backends = [name.strip() for name in options.backends.split(",") if name.strip()]
    unknown = set(options.backends) - {"memory", "sqlite", "postgres", "mongodb", "mysql"}
    if unknown:
        parser.error(f"unknown backend(s): {', '.join(sorted(unknown))}")
    if "mongodb" in options.backends and not options.mongodb_url:
        parser.error("--backends mongodb needs --mongodb-url (a real mongod replica set)")
    if options.mongodb_url and "mongodb" not in options.backends:
        options.backends.append("mongodb")
    options.workloads = [name.strip() for name in options.workloads.split(",") if name.strip()]
    unknown = set(options.workloads) - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workload(s): {', '.join(sorted(unknown))}")
    options.workloads = [name for name in WORKLOADS if name in options.workloads]
    sizes = QUICK if options.quick else FULL
    if options.repetitions is not None:
        if options.repetitions < 1:
            parser.error("--repetitions must be at least 1")
        sizes = Sizes(**{**asdict(sizes), "repetitions": options.repetitions})
    options.sizes = sizes
    return options


def main(argv: Sequence[str] | None = None, *, options: argparse.Namespace | None = None) -> int:
    """The command line: run, print the table and the bars, write the JSON; exit status 1
    if the framework failed a workload (a failing raw or peer side is reported and left
    out)."""
    if options is None:
        options = parse_args(argv)
    started = time.perf_counter()
    report = asyncio.run(run(options))
    print(markdown(report.rows))
    results = bars(report.rows)
    if results:
        print()
        print("Bars (DESIGN.md section 7):")
        print(_bars_text(results))
    for name, reason in report.skipped.items():
        print(f"\n{name} skipped: {reason}")
    if options.json:
        Path(options.json).write_text(json.dumps(report.as_json(), indent=2) + "\n")
    _log(f"done in {time.perf_counter() - started:.0f}s")
    if options.profile:
        _log(f"profiles in {options.profile}: python -m pstats <file>, or see top costs below")
        for path in sorted(Path(options.profile).glob("*.prof")):
            _log(f"--- {path.name}")
            stats = pstats.Stats(str(path), stream=sys.stderr)
            stats.sort_stats("tottime").print_stats(12)
    for error in report.errors:
        print(f"\nerror: {error['backend']}/{error['workload']}/{error['side']}: {error['error']}")
    return 1 if any(error["side"] == "framework" for error in report.errors) else 0
