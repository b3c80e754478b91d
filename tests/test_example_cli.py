"""The example's command line: logging, redacted URLs, and a SQLite setup checked at startup."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest

from cqrs import ConfigurationError
from cqrs_conformance.plugin import unusable
from examples.bank_account import preflight
from examples.bank_account.__main__ import main

ROOT = Path(__file__).resolve().parent.parent
POSTGRES = os.environ.get("CQRS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def test_demo_logs_each_event_to_stderr():
    run = subprocess.run(
        [sys.executable, "-m", "examples.bank_account", "demo", "--database-url", "memory://"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "refused WithdrawMoney" in run.stdout
    assert "INFO examples.bank_account: demo-" in run.stderr
    assert "#1: AccountOpened(" in run.stderr


def test_demo_prints_the_url_without_its_password(capsys):
    name = f"bank_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(POSTGRES, autocommit=True, connect_timeout=3)
    except psycopg.Error as error:
        unusable("postgres", f"cannot connect to {POSTGRES}: {error}")
    with admin:
        admin.execute(f"CREATE DATABASE {name}")
        try:
            # The test server trusts local connections, so any password is accepted.
            url = POSTGRES.replace("postgres@", "postgres:s3cret-pw@", 1).rsplit("/", 1)[0]
            assert main(["demo", "--database-url", f"{url}/{name}"]) == 0
        finally:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    output = capsys.readouterr()
    assert "database: postgresql://postgres:***@" in output.out
    assert "s3cret-pw" not in output.out + output.err


def test_an_unsupported_url_is_refused_without_its_password(capsys):
    assert main(["demo", "--database-url", "postgresql+psycopg://u:s3cret-pw@h/db"]) == 1
    error = capsys.readouterr().err
    assert "unsupported database URL 'postgresql+psycopg://u:***@h/db'" in error
    assert "s3cret-pw" not in error


@pytest.fixture
def as_a_user(monkeypatch):
    """Root may write anything; check the permission bits as their owner (a user) would."""
    if os.geteuid() == 0:

        def access(path, mode):
            return not mode & os.W_OK or bool(Path(path).stat().st_mode & stat.S_IWUSR)

        monkeypatch.setattr(os, "access", access)


@pytest.mark.parametrize("suffixes", [[""], ["-wal", "-shm"], ["", "-shm"]])
def test_serve_refuses_read_only_sqlite_files_naming_them_and_the_fix(
    tmp_path, capsys, monkeypatch, as_a_user, suffixes
):
    monkeypatch.setenv("BANK_API_KEYS", "p1:p1-key-0123456789abcdef")
    path = tmp_path / "bank.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").write_bytes(b"")
    for suffix in suffixes:
        Path(f"{path}{suffix}").chmod(0o444)
    assert main(["serve", "--database-url", f"sqlite:///{path}"]) == 2
    error = capsys.readouterr().err
    named = " ".join(f"{path}{suffix}" for suffix in suffixes)
    assert f"the SQLite database cannot be written: {named} " in error
    assert f"Fix: chmod u+w {named}" in error


def test_serve_refuses_a_sqlite_database_in_a_read_only_directory(tmp_path, capsys, as_a_user):
    directory = tmp_path / "ro"
    directory.mkdir()
    directory.chmod(0o555)
    try:
        url = f"sqlite:///{directory / 'bank.db'}"
        with pytest.raises(ConfigurationError, match=r"directory .* is not writable"):
            preflight.check_sqlite_files(url)
    finally:
        directory.chmod(0o755)


@pytest.mark.parametrize(
    "url", ["memory://", "sqlite://:memory:", "postgresql://h/db", "mongodb://h/db"]
)
def test_other_databases_need_no_file_check(url):
    preflight.check_sqlite_files(url)
    assert preflight.sqlite_path(url) is None


def test_writable_sqlite_files_pass(tmp_path, as_a_user):
    path = tmp_path / "bank.db"
    path.write_bytes(b"")
    preflight.check_sqlite_files(f"sqlite:///{path}")
    assert preflight.sqlite_path(f"sqlite:///{path}") == path
