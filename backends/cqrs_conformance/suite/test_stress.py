"""Stress runs on every backend (marker ``stress``; CI runs them, the default run does not).

Sizes scale with the backend factory's ``stress_scale`` (a slow test server gets less load;
the rules checked are the same).
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from decimal import Decimal

import pytest

from cqrs import CqrsFramework, GenericQuery, PersistedEventStore, QueryReplay, Retry, UserError
from cqrs_conformance.bank_account import (
    BankAccount,
    BankAccountServices,
    BankAccountView,
    CustomerDepositedMoney,
    CustomerWithdrewCash,
    DepositMoney,
    OpenAccount,
    WithdrawMoney,
)


def scaled(backend, count: int) -> int:
    return max(1, int(count * getattr(backend.factory, "stress_scale", 1.0)))


class HotRun:
    """32 writers on 4 hot accounts through the framework, and a reader tailing the stream."""

    def __init__(self, backend, repository) -> None:
        self.repository = repository
        self.store = PersistedEventStore(repository, BankAccount, snapshot_every=7)
        self.cqrs = CqrsFramework(
            self.store,
            (),
            BankAccountServices(),
            retry=Retry(attempts=500, base_delay=0.001, max_delay=0.05),
        )
        self.accounts = [f"hot-{i}" for i in range(4)]
        self.commands_per_writer = scaled(backend, 100)
        self.accepted: dict[str, tuple[str, Decimal]] = {}  # command id -> (account, amount)
        self.refused = 0
        self.tail: list[tuple[str, int, int]] = []  # (aggregate id, sequence, position)
        self.done = asyncio.Event()

    async def writer(self, number: int) -> None:
        rng = random.Random(number)
        for _ in range(self.commands_per_writer):
            account = rng.choice(self.accounts)
            amount = Decimal(rng.randint(1, 500)) / 100
            withdraw = rng.random() < 0.4
            command = WithdrawMoney(amount, "ATM-1") if withdraw else DepositMoney(amount)
            command_id = uuid.uuid4().hex
            try:
                await self.cqrs.execute_with_metadata(account, command, {"command_id": command_id})
            except UserError:
                self.refused += 1
                continue
            self.accepted[command_id] = (account, -amount if withdraw else amount)

    async def reader(self) -> None:
        checkpoint = None
        while True:
            finished = self.done.is_set()
            async for event in self.repository.stream_all_events(None, checkpoint):
                self.tail.append((event.aggregate_id, event.sequence, event.position))
                checkpoint = event.position
            if finished:
                return
            await asyncio.sleep(0.005)

    async def run(self) -> None:
        for account in self.accounts:
            await self.cqrs.execute(account, OpenAccount(account))
        reading = asyncio.create_task(self.reader())
        await asyncio.gather(*(self.writer(n) for n in range(32)))
        total = len(self.accepted) + len(self.accounts)
        deadline = asyncio.get_running_loop().time() + 30
        # Poll: a backend may hold the newest events back until older transactions end.
        while len(self.tail) < total and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        self.done.set()
        await reading

    async def check_account(self, account: str) -> None:
        events = await self.store.load_events(account)
        assert [e.sequence for e in events] == list(range(1, len(events) + 1)), "gap"
        ids = [e.metadata["command_id"] for e in events[1:]]
        assert len(ids) == len(set(ids)), "an accepted command's event is stored twice"
        assert set(ids) == {c for c, (a, _) in self.accepted.items() if a == account}
        amounts = (amount for a, amount in self.accepted.values() if a == account)
        state = (await self.store.load_aggregate(account)).aggregate
        assert state.balance == sum(amounts, Decimal(0))
        assert all(
            isinstance(e.payload, CustomerDepositedMoney | CustomerWithdrewCash) for e in events[1:]
        )

    def check_tail(self) -> None:
        """The reader saw every event once, in an order consistent with each sequence."""
        assert len(self.tail) == len(self.accepted) + len(self.accounts)
        assert Counter((a, s) for a, s, _ in self.tail).most_common(1)[0][1] == 1
        positions = [p for _, _, p in self.tail]
        assert positions == sorted(positions)
        for account in self.accounts:
            sequences = [s for a, s, _ in self.tail if a == account]
            assert sequences == list(range(1, len(sequences) + 1))


@pytest.mark.stress
async def test_hot_aggregates_under_32_writers_lose_and_duplicate_nothing(backend):
    run = HotRun(backend, await backend.open_repository())
    await run.run()
    for account in run.accounts:
        await run.check_account(account)
    assert run.refused + len(run.accepted) == 32 * run.commands_per_writer
    run.check_tail()


@pytest.mark.stress
async def test_many_aggregates_in_parallel_keep_global_order(backend):
    repository = await backend.open_repository()
    store = PersistedEventStore(repository, BankAccount)
    cqrs = CqrsFramework(store, (), BankAccountServices())
    per_writer = scaled(backend, 60)

    async def writer(number: int) -> None:
        account = f"acc-{number}"
        await cqrs.execute(account, OpenAccount(account))
        for _ in range(per_writer):
            await cqrs.execute(account, DepositMoney(Decimal(1)))

    await asyncio.gather(*(writer(n) for n in range(16)))
    streamed = [e async for e in store.stream_all_events()]
    assert len(streamed) == 16 * (per_writer + 1)
    positions = [e.position for e in streamed]
    assert positions == sorted(set(positions))
    for number in range(16):
        sequences = [e.sequence for e in streamed if e.aggregate_id == f"acc-{number}"]
        assert sequences == list(range(1, per_writer + 2))


@pytest.mark.stress
async def test_views_under_concurrent_commands_equal_a_replay(backend):
    repository = await backend.open_repository()
    live = repository.view_repository(BankAccountView, backend.name("live"))
    await live.create_schema()
    store = PersistedEventStore(repository, BankAccount)
    cqrs = CqrsFramework(
        store,
        [GenericQuery(live, BankAccountView, attempts=500, max_delay=0.02)],
        BankAccountServices(),
        retry=Retry(attempts=500, base_delay=0.001, max_delay=0.05),
    )
    accounts = [f"v{i}" for i in range(3)]
    for account in accounts:
        await cqrs.execute(account, OpenAccount(account))
    per_account = scaled(backend, 40)
    await asyncio.gather(
        *(
            cqrs.execute(account, DepositMoney(Decimal(n + 1) / 100))
            for n in range(per_account)
            for account in accounts
        )
    )
    rebuilt = repository.view_repository(BankAccountView, backend.name("rebuilt"))
    await rebuilt.create_schema()
    await QueryReplay(store, GenericQuery(rebuilt, BankAccountView)).replay_all()
    expected_total = sum(Decimal(n + 1) / 100 for n in range(per_account))
    for account in accounts:
        view = await live.load(account)
        assert view is not None
        assert view == await rebuilt.load(account)
        assert view.balance == expected_total
        assert len(view.ledger) == per_account
        events = await store.load_events(account)
        deposits = [e.payload for e in events[1:] if isinstance(e.payload, CustomerDepositedMoney)]
        assert [entry.amount for entry in view.ledger] == [d.amount for d in deposits]
