"""The public surface: exports are honest, the core imports no driver, connect() is clear."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

import cqrs
from cqrs import ConfigurationError, connect
from cqrs.ddl import ddl_files


def test_all_is_sorted_and_complete():
    assert list(cqrs.__all__) == sorted(cqrs.__all__)
    public = {name for name in dir(cqrs) if not name.startswith("_")}
    modules = {"aggregate", "codec", "connection", "ddl", "errors", "events", "framework"}
    modules |= {"factories", "query", "repository", "store", "testing", "upcasting"}
    modules |= {"checkpoints", "projection", "rebuild", "subscription", "tagged", "telemetry"}
    modules |= {"cli"}  # the command line, once something imported it
    assert public - modules == set(cqrs.__all__)
    for name in cqrs.__all__:
        assert getattr(cqrs, name).__doc__, f"{name} has no docstring"


def test_importing_cqrs_imports_no_database_driver():
    code = (
        "import sys, cqrs, cqrs_memory, cqrs_conformance\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('aiosqlite', 'sqlite3', 'psycopg', 'psycopg_pool', 'pymongo', 'asyncmy', 'pydantic',"
        " 'pytest')]\n"
        "print(bad)\n"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert output.strip() == "[]"


async def test_connect_memory_is_an_async_context_manager_and_awaitable():
    async with connect("memory://") as repository:
        assert await repository.get_events("T", "x") == []
    repository = await connect("memory://")
    await repository.close()


@pytest.mark.parametrize("url", ["redis://localhost", "nonsense", "", "oracle://x/y"])
def test_unknown_scheme_is_a_clear_error(url):
    with pytest.raises(ConfigurationError, match="unsupported database URL"):
        connect(url)


async def test_missing_backend_names_the_extra(monkeypatch):
    installed = cqrs.connection.backends()
    missing = EntryPoint("postgresql", "no_such_module:from_url [postgres]", "cqrs.backends")
    monkeypatch.setattr(cqrs.connection, "backends", lambda: {**installed, "postgresql": missing})
    with pytest.raises(ConfigurationError, match=r"pip install 'cqrs-es\[postgres\]'"):
        await connect("postgresql://localhost/db")


def test_every_builtin_scheme_is_registered_by_entry_point():
    installed = cqrs.connection.backends()
    expected = {"memory", "sqlite", "postgresql", "postgres", "mongodb", "mongodb+srv", "mysql"}
    assert expected <= set(installed)
    for scheme in expected:
        assert installed[scheme].load().__name__ == "from_url"


async def test_a_scheme_registered_by_another_package_is_used(monkeypatch):
    installed = cqrs.connection.backends()
    extra = EntryPoint("custom", "cqrs_memory:from_url", "cqrs.backends")
    monkeypatch.setattr(cqrs.connection, "backends", lambda: {**installed, "custom": extra})
    async with connect("custom://anything") as repository:
        assert await repository.get_events("T", "x") == []


def test_wheel_ships_the_packages_the_ddl_and_py_typed(tmp_path):
    root = Path(__file__).resolve().parent.parent
    subprocess.run(
        [sys.executable, "-m", "hatchling", "build", "-t", "wheel", "-d", str(tmp_path)],
        cwd=root,
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    declared = tomllib.loads((root / "pyproject.toml").read_text("utf-8"))
    expected = {
        Path(path).name
        for path in declared["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    }
    assert {"cqrs", "cqrs_memory", "cqrs_sqlite", "cqrs_postgres", "cqrs_mongodb"} <= expected
    assert "cqrs_conformance" in expected  # the conformance suite, for third-party backends
    shipped = {name.split("/")[0] for name in names if name.endswith("/__init__.py")}
    assert shipped == expected
    for package in shipped:  # every installed package is typed (PEP 561)
        assert f"{package}/py.typed" in names, package
    suite = root / "backends" / "cqrs_conformance" / "suite"
    for path in sorted(suite.glob("test_*.py")):
        assert f"cqrs_conformance/suite/{path.name}" in names
    for dialect in ("postgres", "sqlite", "mysql"):
        for path in sorted((root / "sql" / dialect).rglob("*.sql")):
            packaged = f"cqrs/sql/{path.relative_to(root / 'sql').as_posix()}"
            assert packaged in names
            assert zipfile.ZipFile(wheel).read(packaged) == path.read_bytes()


def test_ddl_files_are_read_from_the_sql_directory():
    root = Path(__file__).resolve().parent.parent
    for dialect in ("postgres", "sqlite"):
        files = ddl_files(dialect)
        assert files == [
            (path.name, path.read_text("utf-8"))
            for path in sorted((root / "sql" / dialect).glob("*.sql"))
        ]
        assert files
