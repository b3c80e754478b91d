"""The bank-account example as a real service: ``python -m examples.bank_account serve`` in a
subprocess, attacked by Schemathesis (``--checks all``) on SQLite and PostgreSQL and killed
with SIGKILL under concurrent load.

Schemathesis runs a few examples per operation by default (``-m stress``: many more); the
crash test sends a few hundred deposits (``-m stress``: thousands).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import msgspec
import psycopg
import pytest

from cqrs_conformance.plugin import unusable

ROOT = Path(__file__).resolve().parent.parent
KEY = "service-test-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
POSTGRES = os.environ.get("CQRS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
STRESS = os.environ.get("CQRS_TEST_STRESS") == "1"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Server:
    """``serve`` in a subprocess on a free port, with one API key."""

    def __init__(self, database_url: str, log: Path) -> None:
        self.database_url = database_url
        self.log = log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [sys.executable, "-m", "examples.bank_account", "serve"]
        command += ["--database-url", self.database_url, "--port", str(self.port)]
        env = {**os.environ, "BANK_API_KEYS": f"tester:{KEY}", "PYTHONPATH": str(ROOT)}
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"serve exited with {self.process.returncode}: {self.log.read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/openapi.json", timeout=2).status_code == 200:
                    return
            time.sleep(0.1)
        pytest.fail(f"serve did not answer within 60 s: {self.log.read_text()}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


@contextlib.contextmanager
def serving(database_url: str, log: Path) -> Iterator[Server]:
    server = Server(database_url, log)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request, tmp_path) -> Iterator[str]:
    """A new, empty database: a SQLite file, or a PostgreSQL database of its own (the app's
    tables have fixed names)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'bank.db'}"
        return
    name = f"bank_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(POSTGRES, autocommit=True, connect_timeout=3)
    except psycopg.Error as error:
        unusable("postgres", f"cannot connect to {POSTGRES}: {error}")
    with admin:
        admin.execute(f"CREATE DATABASE {name}")
        try:
            yield POSTGRES.rsplit("/", 1)[0] + f"/{name}"
        finally:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


HOOKS = """
import schemathesis


@schemathesis.hook
def map_case(context, case):
    # A rule JSON Schema cannot state: OpenAccount names the account of the path (a mismatch
    # is refused with 422, so a valid request must keep it).
    body, path = case.body, case.path_parameters or {}
    opening = body.get("OpenAccount") if isinstance(body, dict) else None
    positive = case.meta is None or case.meta.generation.mode.is_positive
    if positive and isinstance(opening, dict) and "account_id" in opening:
        if isinstance(path.get("account_id"), str):
            opening["account_id"] = path["account_id"]
    return case
"""


def test_schemathesis_finds_no_failure(database_url, tmp_path):
    examples = "150" if STRESS else "25"
    (tmp_path / "bank_hooks.py").write_text(HOOKS)
    with serving(database_url, tmp_path / "serve.log") as server:
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "schemathesis.cli",
                "run",
                f"{server.url}/openapi.json",
                "--checks",
                "all",
                "--header",
                f"Authorization: Bearer {KEY}",
                "--max-examples",
                examples,
                "--seed",
                "1",
                "--no-color",
            ],
            cwd=tmp_path,
            env={**os.environ, "SCHEMATHESIS_HOOKS": "bank_hooks", "PYTHONPATH": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    report = run.stdout + run.stderr
    assert run.returncode == 0, report
    assert "Failures:" not in report, report
    assert "6 selected / 6 total" in report
    server_log = (tmp_path / "serve.log").read_text()
    assert " 500 " not in server_log, server_log[-3000:]
    assert "Traceback" not in server_log, server_log[-3000:]


# -- kill -9 under load ----------------------------------------------------------------------


async def deposit(client: httpx.AsyncClient, url: str, key: str) -> int | None:
    """Send one keyed deposit of 0.01; the status, or None when no answer came."""
    try:
        response = await client.post(
            url,
            json={"DepositMoney": {"amount": 0.01}},
            headers={**AUTH, "Idempotency-Key": key},
        )
    except httpx.HTTPError:
        return None
    return response.status_code


def stored_keys(path: Path) -> list[str]:
    """The idempotency keys of the stored deposit events, read from the file directly."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        rows = db.execute(
            "SELECT metadata FROM events WHERE event_type = 'CustomerDepositedMoney'"
        ).fetchall()
    return [msgspec.json.decode(row[0])["idempotency_key"] for row in rows]


async def test_a_killed_server_loses_no_acknowledged_command_and_honours_keys(tmp_path):
    path = tmp_path / "bank.db"
    server = Server(f"sqlite:///{path}", tmp_path / "serve.log")
    total = 1000 if STRESS else 300
    keys = [f"deposit-{n}" for n in range(total)]
    account = f"{server.url}/accounts/crash"
    acknowledged: set[str] = set()
    a_third = asyncio.Event()

    async def worker(client: httpx.AsyncClient, queue: list[str]) -> None:
        while queue:
            key = queue.pop()
            if await deposit(client, account, key) == 200:
                acknowledged.add(key)
                if len(acknowledged) >= total // 3:
                    a_third.set()

    async def retrier(
        client: httpx.AsyncClient, queue: list[str], answers: dict[str, int | None]
    ) -> None:
        # What a client does with an unanswered or busy (409) keyed command: send it again.
        while queue:
            key = queue.pop()
            for _ in range(20):
                answers[key] = await deposit(client, account, key)
                if answers[key] == 200:
                    break

    server.start()
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            opened = await client.post(
                account, json={"OpenAccount": {"account_id": "crash"}}, headers=AUTH
            )
            assert opened.status_code == 200
            queue = list(reversed(keys))
            workers = [asyncio.create_task(worker(client, queue)) for _ in range(16)]
            await asyncio.wait_for(a_third.wait(), 120)
            await asyncio.to_thread(server.kill)  # mid-load: requests are in flight
            await asyncio.gather(*workers)
            assert 0 < len(acknowledged) < total
            server.start()  # the same file, a new process
            # Every key again, acknowledged or not, concurrently: each deposits at most once.
            answers: dict[str, int | None] = {}
            queue = list(keys)
            await asyncio.gather(*(retrier(client, queue, answers) for _ in range(16)))
            assert set(answers.values()) == {200}, answers
            replay = await client.post(
                account,
                json={"DepositMoney": {"amount": 0.01}},
                headers={**AUTH, "Idempotency-Key": keys[0]},
            )
            assert replay.headers["Idempotent-Replayed"] == "true"
            view = (await client.get(account, headers=AUTH)).json()
    finally:
        server.stop()
    stored = stored_keys(path)
    assert sorted(stored) == sorted(keys)  # every key exactly once, none lost, none twice
    assert acknowledged <= set(stored)
    assert Decimal(str(view["balance"])) == Decimal(total) / 100
