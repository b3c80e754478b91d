"""Hypothesis laws on every backend: replay equals live state; snapshot plus tail equals a
full replay for any snapshot size and any split of the events into commits."""

from __future__ import annotations

import uuid
from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cqrs import CqrsFramework, PersistedEventStore
from cqrs_conformance.bank_account import (
    AccountOpened,
    BankAccount,
    BankAccountEvent,
    BankAccountServices,
    CustomerDepositedMoney,
    CustomerWithdrewCash,
    DepositMoney,
    OpenAccount,
    WithdrawMoney,
)

PROPERTY_SETTINGS = settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

amounts = st.decimals(min_value=Decimal("0.01"), max_value=Decimal(1000), places=2)
commands = st.lists(
    st.one_of(
        amounts.map(DepositMoney),
        amounts.map(lambda amount: WithdrawMoney(amount, "ATM-1")),
    ),
    max_size=12,
)


@PROPERTY_SETTINGS
@given(commands=commands)
async def test_replay_equals_live_state(repository, commands):
    account = f"acc-{uuid.uuid4().hex}"
    store = PersistedEventStore(repository, BankAccount)
    cqrs = CqrsFramework(store, (), BankAccountServices())
    await cqrs.execute(account, OpenAccount(account))
    live = BankAccount()
    live.aggregate_id = account
    live.apply(AccountOpened(account))
    for command in commands:
        context = await store.load_aggregate(account)
        try:
            events = await context.aggregate.handle(command, BankAccountServices())
        except Exception:  # noqa: BLE001 - a refused command changes nothing
            continue
        await store.commit(events, context, {})
        for event in events:
            live.apply(event)
    replayed = await store.load_aggregate(account)
    assert replayed.aggregate == live


@PROPERTY_SETTINGS
@given(
    snapshot_every=st.integers(min_value=1, max_value=7),
    batches=st.lists(st.integers(min_value=1, max_value=6), min_size=1, max_size=6),
)
async def test_snapshot_plus_tail_equals_full_replay(repository, snapshot_every, batches):
    account = f"acc-{uuid.uuid4().hex}"
    snapshotting = PersistedEventStore(repository, BankAccount, snapshot_every=snapshot_every)
    replaying = PersistedEventStore(repository, BankAccount)
    context = await snapshotting.load_aggregate(account)
    await snapshotting.commit([AccountOpened(account)], context, {})
    balance = Decimal(0)
    for size in batches:
        context = await snapshotting.load_aggregate(account)
        events: list[BankAccountEvent] = []
        for index in range(size):
            if index % 3 == 2 and balance >= 1:
                balance -= 1
                events.append(CustomerWithdrewCash(Decimal(1), balance))
            else:
                balance += 2
                events.append(CustomerDepositedMoney(Decimal(2), balance))
        await snapshotting.commit(events, context, {})
    with_snapshot = await snapshotting.load_aggregate(account)
    full = await replaying.load_aggregate(account)
    assert with_snapshot.aggregate == full.aggregate
    assert with_snapshot.version == full.version == 1 + sum(batches)
    assert full.aggregate.balance == balance
