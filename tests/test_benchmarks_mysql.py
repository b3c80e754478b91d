"""The MySQL benchmarks run: the side-by-side table on a tiny load, the raw side on the
backend's statements, and the global-order cost measurement."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import pytest
from backends_under_test.mysql import FACTORY

from benchmarks import mysql_order
from benchmarks.harness import QUICK, main, parse_args
from benchmarks.raw_mysql import RawMysqlSide
from benchmarks.workloads import WORKLOADS
from cqrs_mysql import MysqlEventRepository, parse_url

TINY = replace(
    QUICK,
    commit_1=3,
    commit_10=2,
    load_100=2,
    load_1000=1,
    load_snapshot=2,
    concurrent_8=8,
    repetitions=2,
    warmups=0,
    replay_events=200,
    catchup_events=200,
    view_events=50,
)


@pytest.fixture
async def server() -> str:
    reason = await FACTORY.unavailable()
    if reason is not None:
        required = os.environ.get("CQRS_TEST_REQUIRE", "").split(",")
        if "mysql" in [name.strip() for name in required]:
            pytest.fail(f"mysql is required (CQRS_TEST_REQUIRE) but {reason}")
        pytest.skip(f"mysql: {reason}")
    return FACTORY.url


def test_raw_mysql_runs_the_backends_statements():
    raw = RawMysqlSide("mysql://nowhere/x", "e1", "s1", view_prefix="p_")
    assert (
        raw.statements
        == MysqlEventRepository(parse_url("mysql://nowhere/x"), "e1", "s1").statements
    )
    assert raw.statements.persist(3, snapshot=True).count("UNION ALL") == 2


def test_a_tiny_side_by_side_run_on_mysql(server, tmp_path, capsys):
    path = tmp_path / "out.json"
    options = parse_args(["--backends", "mysql", "--mysql-url", server, "--json", str(path)])
    options.sizes = TINY
    assert main(options=options) == 0
    report = json.loads(path.read_text())
    rows = report["rows"]
    assert [row["workload"] for row in rows] == list(WORKLOADS)
    for row in rows:
        assert row["framework"] > 0
        if row["workload"] != "view_upsert":
            assert row["raw"] > 0
    assert report["machine"]["mysql_server"]
    assert "| mysql | commit_1 | commands/s |" in capsys.readouterr().out


async def test_the_global_order_cost_is_measured_side_by_side(server):
    result = await mysql_order.run(server, seconds=0.2, rounds=1)
    assert set(result) == {"1_writers", "8_writers"}
    for row in result.values():
        assert row["counter"] > 0
        assert row["no_counter"] > 0
        assert row["ratio"] == pytest.approx(row["counter"] / row["no_counter"], rel=0.01)
