"""The public surface: exports are honest, the core imports no driver, connect() is clear."""

from __future__ import annotations

import subprocess
import sys

import pytest

import cqrs
from cqrs import ConfigurationError, connect


def test_all_is_sorted_and_complete():
    assert list(cqrs.__all__) == sorted(cqrs.__all__)
    public = {name for name in dir(cqrs) if not name.startswith("_")}
    modules = {"aggregate", "codec", "connection", "ddl", "errors", "events", "framework"}
    modules |= {"query", "repository", "store", "testing", "upcasting"}
    assert public - modules == set(cqrs.__all__)
    for name in cqrs.__all__:
        assert getattr(cqrs, name).__doc__, f"{name} has no docstring"


def test_importing_cqrs_imports_no_database_driver():
    code = (
        "import sys, cqrs, cqrs_memory\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('aiosqlite', 'sqlite3', 'psycopg', 'psycopg_pool', 'pymongo', 'pydantic')]\n"
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


@pytest.mark.parametrize("url", ["redis://localhost", "nonsense", "", "mysql://x/y"])
def test_unknown_scheme_is_a_clear_error(url):
    with pytest.raises(ConfigurationError, match="unsupported database URL"):
        connect(url)


async def test_missing_backend_names_the_extra(monkeypatch):
    monkeypatch.setitem(cqrs.connection.BACKENDS, "postgresql", ("no_such_module", "postgres"))
    with pytest.raises(ConfigurationError, match=r"pip install 'cqrs-es\[postgres\]'"):
        await connect("postgresql://localhost/db")
