"""The bank's cross-account projections: per ATM and per day, exactly once, in any process."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from examples.bank_account.__main__ import main
from examples.bank_account.domain import DepositMoney, OpenAccount, WithdrawMoney
from examples.bank_account.projections import AtmActivity, DailyTotals, update_daily
from examples.bank_account.service import BankService

ROOT = Path(__file__).resolve().parent.parent


async def bank(backend) -> BankService:
    return await BankService.over(
        await backend.open_repository(),
        view_table=backend.name("v"),
        projection_prefix=backend.name("bank"),
    )


async def activity(service: BankService) -> int:
    last = 0
    for account in ("a", "b", "c"):
        await service.cqrs.execute(account, OpenAccount(account))
        await service.cqrs.execute(account, DepositMoney(Decimal(50)))
        for atm in ("ATM-1", "ATM-2"):
            envelopes = await service.cqrs.execute(account, WithdrawMoney(Decimal(2), atm))
            last = envelopes[-1].position
    return last


async def test_the_views_equal_a_replay_of_the_events(backend):
    service = await bank(backend)
    last = await activity(service)
    runner = service.projections.runner(batch_size=4, poll_interval=0.02)
    task = asyncio.create_task(runner.run())
    try:
        await runner.wait_for(last, timeout=20)
    finally:
        runner.stop()
        await asyncio.wait_for(task, 10)
    atm = await service.projections.atms.load("ATM-1")
    assert atm == AtmActivity("ATM-1", 3, Decimal(6), ["a", "b", "c"])
    expected: dict[str, DailyTotals] = {}
    async for envelope in service.store.stream_all_events():
        update_daily(
            expected.setdefault(envelope.timestamp.date().isoformat(), DailyTotals()), envelope
        )
    for day, totals in expected.items():
        assert await service.projections.days.load(day) == totals
    assert {s.state for s in runner.status().values()} == {"stopped"}


async def test_the_demo_shows_the_atm_view(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    assert await asyncio.to_thread(main, ["demo", "--database-url", url]) == 0
    output = capsys.readouterr().out
    assert "ATM-N (projection bank_atms)" in output
    assert '"withdrawals": 1' in output
    assert "projection bank_daily_totals: checkpoint 4" in output


def test_the_project_command_runs_until_sigterm(tmp_path):
    url = f"sqlite:///{tmp_path / 'bank.db'}"
    assert main(["demo", "--database-url", url]) == 0
    process = subprocess.Popen(
        [sys.executable, "-m", "examples.bank_account", "project", "--database-url", url],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert "projecting" in first
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0
    assert "projection bank_atms: stopped, checkpoint 4" in output


@pytest.mark.parametrize("bad", [["project", "--database-url", "nosuch://x"]])
def test_a_bad_url_is_a_clear_error(bad, capsys):
    assert main(bad) == 1
    assert "unsupported database URL" in capsys.readouterr().err
