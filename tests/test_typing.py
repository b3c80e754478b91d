"""Types that work for the user: the README quickstart passes ``mypy --strict`` as pasted,
and the mypy configuration keeps every shipped package fully strict.

The typed usage file (tests/typing/usage.py) is checked by ``mypy`` itself (it is in
``[tool.mypy] files``); ``nox -s typecheck`` runs mypy and then this file, where mypy is
installed. The test dependency group does not install mypy, so there the mypy test skips.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from test_readme import quickstart

ROOT = Path(__file__).resolve().parent.parent
MYPY = importlib.util.find_spec("mypy") is not None


def mypy_strict(directory: Path, code: str) -> subprocess.CompletedProcess[str]:
    """Run ``mypy --strict`` on ``code`` as a user's file outside the repository (so the
    repository's own configuration does not apply), against the installed packages."""
    script = directory / "quickstart.py"
    script.write_text(code, "utf-8")
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(script)],
        capture_output=True,
        text=True,
        check=False,
        cwd=directory,
    )


@pytest.mark.skipif(not MYPY, reason="mypy is not installed here (nox -s typecheck runs it)")
def test_the_readme_quickstart_passes_mypy_strict_as_pasted(tmp_path):
    result = mypy_strict(tmp_path, quickstart())
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("Success"), result.stdout


@pytest.mark.skipif(not MYPY, reason="mypy is not installed here (nox -s typecheck runs it)")
def test_a_regression_in_the_quickstart_types_is_caught(tmp_path):
    # The same program with a wrong command and a misspelled field: both must be errors, so
    # the check above is not passing because everything is Any.
    code = quickstart().replace('app.execute("acc-1", 50)', 'app.execute("acc-1", "50")')
    code = code.replace(".aggregate.balance)", ".aggregate.balanse)")
    result = mypy_strict(tmp_path, code)
    assert result.returncode == 1, result.stdout
    assert '"execute" of "CqrsFramework" has incompatible type "str"' in result.stdout
    assert '"Account" has no attribute "balanse"' in result.stdout


def test_every_shipped_package_is_checked_fully_strict():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
    mypy = config["tool"]["mypy"]
    assert mypy["strict"] is True
    strict = {"disallow_untyped_defs", "disallow_untyped_calls", "disallow_incomplete_defs"}
    fully_strict: set[str] = set()
    for override in mypy["overrides"]:
        if all(override.get(flag) is True for flag in strict):
            fully_strict.update(override["module"])
    wheel = config["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    for package in (Path(path).name for path in wheel):
        assert f"{package}.*" in fully_strict, f"add {package}.* to the strict mypy override"
    assert {"examples.*", "benchmarks.*", "noxfile", "usage"} <= fully_strict
    checked = set(mypy["files"])
    assert {"cqrs", "backends", "examples", "benchmarks", "noxfile.py", "tests"} <= checked
