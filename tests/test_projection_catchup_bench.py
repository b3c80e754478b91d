"""Smoke test of ``python -m benchmarks.catchup`` (catch-up against ``stream_all_events``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.catchup import main


def test_catchup_compares_the_runner_with_the_stream_on_sqlite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "catchup.json"
    options = ["--backends", "sqlite", "--events", "200", "--rounds", "1", "--json", str(path)]
    assert main(options) == 0
    (row,) = json.loads(path.read_text())
    assert row["backend"] == "sqlite"
    assert row["events"] == 200
    for name in ("stream", "stream+decode", "stream+decode_all", "rows+decode_rows", "runner"):
        assert row[name] > 0
    assert row["ratio_runner"] == pytest.approx(row["runner"] / row["stream"], abs=0.001)
    assert row["ratio_decode"] == pytest.approx(row["stream+decode"] / row["stream"], abs=0.001)
    assert row["ratio_decode_rows"] == pytest.approx(
        row["rows+decode_rows"] / row["stream"], abs=0.001
    )
    assert "| sqlite |" in capsys.readouterr().out
