"""ddl_files: the SQL files in name order, from the wheel's cqrs/sql when it is there."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import cqrs.ddl
from cqrs.ddl import ddl_files

ROOT = Path(__file__).resolve().parent.parent


def test_a_source_checkout_reads_the_repository_sql_directory():
    files = ddl_files("sqlite")
    names = [name for name, _ in files]
    assert names == sorted(path.name for path in (ROOT / "sql" / "sqlite").glob("*.sql"))
    assert names[0].startswith("001_")
    assert files[0][1] == (ROOT / "sql" / "sqlite" / names[0]).read_text("utf-8")


def test_an_installed_package_reads_its_packaged_copy(tmp_path, monkeypatch):
    packaged = tmp_path / "cqrs"
    (packaged / "sql" / "sqlite").mkdir(parents=True)
    (packaged / "sql" / "sqlite" / "002_b.sql").write_text("-- second ✓\n", "utf-8")
    (packaged / "sql" / "sqlite" / "001_a.sql").write_text("-- first\n", "utf-8")
    (packaged / "sql" / "sqlite" / "README.txt").write_text("not SQL", "utf-8")
    monkeypatch.setattr(cqrs.ddl.resources, "files", lambda package: packaged)
    assert ddl_files("sqlite") == [("001_a.sql", "-- first\n"), ("002_b.sql", "-- second ✓\n")]


def test_an_unknown_dialect_names_itself():
    with pytest.raises(FileNotFoundError, match=r"^no DDL directory for 'oracle' at .*oracle$"):
        ddl_files("oracle")


def test_the_files_are_read_as_utf_8_whatever_the_locale(tmp_path):
    # Under an ASCII locale (LC_ALL=C without UTF-8 mode), as under cp1252 on Windows, a
    # DDL file with a non-ASCII comment must still read as written. (Reading the shipped
    # files here too also tells mutmut that this test covers ddl_files.)
    assert [name for name, _ in ddl_files("sqlite")] == sorted(
        path.name for path in (ROOT / "sql" / "sqlite").glob("*.sql")
    )
    (tmp_path / "cqrs" / "sql" / "sqlite").mkdir(parents=True)
    (tmp_path / "cqrs" / "sql" / "sqlite" / "001_a.sql").write_text("-- ✓\n", "utf-8")
    code = (
        "import sys, importlib.resources, pathlib\n"
        "importlib.resources.files = lambda package: pathlib.Path(sys.argv[1]) / 'cqrs'\n"
        "from cqrs.ddl import ddl_files\n"
        "print(ascii(ddl_files('sqlite')))\n"
    )
    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    output = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env=env,
    ).stdout
    assert output.strip() == ascii([("001_a.sql", "-- ✓\n")])
