"""Faults that need a real process: a writer killed with SIGKILL in the middle of writing."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from cqrs import CqrsFramework, PersistedEventStore
from cqrs_sqlite import SqliteEventRepository
from examples.bank_account.domain import (
    BankAccount,
    BankAccountServices,
    DepositMoney,
    OpenAccount,
)

pytestmark = pytest.mark.stress
ROOT = Path(__file__).resolve().parent.parent

WRITER = """
import asyncio, sys
from decimal import Decimal
from cqrs import CqrsFramework, PersistedEventStore
from cqrs_sqlite import SqliteEventRepository
from examples.bank_account.domain import (
    BankAccount, BankAccountServices, DepositMoney, OpenAccount)

async def main(path):
    async with SqliteEventRepository(path) as repository:
        await repository.create_schema()
        store = PersistedEventStore(repository, BankAccount, snapshot_every=5)
        cqrs = CqrsFramework(store, (), BankAccountServices())
        await cqrs.execute("acc", OpenAccount("acc"))
        print("ready", flush=True)
        n = 0
        while True:
            n += 1
            await cqrs.execute("acc", DepositMoney(Decimal(1)))
            print(n, flush=True)  # printed only after the commit returned

asyncio.run(main(sys.argv[1]))
"""


async def test_sqlite_writer_killed_mid_write_loses_no_returned_commit(tmp_path):
    path = tmp_path / "killed.db"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", WRITER, str(path), stdout=asyncio.subprocess.PIPE, cwd=ROOT
    )
    assert process.stdout is not None
    assert (await asyncio.wait_for(process.stdout.readline(), 30)).strip() == b"ready"
    acknowledged = 0
    while acknowledged < 150:
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        acknowledged = int(line)
    process.send_signal(signal.SIGKILL)  # in the middle of its next commits
    remaining = (await process.stdout.read()).split()
    acknowledged = max([acknowledged, *(int(n) for n in remaining)])
    assert await process.wait() == -signal.SIGKILL

    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    async with SqliteEventRepository(path) as repository:
        store = PersistedEventStore(repository, BankAccount, snapshot_every=5)
        events = await store.load_events("acc")
        deposits = len(events) - 1
        assert deposits >= acknowledged, "a commit that returned is missing"
        assert deposits <= acknowledged + 1, "more than the one in-flight commit was stored"
        assert [e.sequence for e in events] == list(range(1, len(events) + 1))
        context = await store.load_aggregate("acc")
        assert context.aggregate.balance == Decimal(deposits)
        cqrs = CqrsFramework(store, (), BankAccountServices())
        await cqrs.execute("acc", DepositMoney(Decimal(1)))  # the file is writable again
        assert (await store.load_aggregate("acc")).aggregate.balance == Decimal(deposits + 1)
        with pytest.raises(Exception, match="already open"):
            await cqrs.execute("acc", OpenAccount("acc"))
