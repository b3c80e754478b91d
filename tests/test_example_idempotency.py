"""Idempotency-Key on every backend: a retry returns the first result and commits nothing."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from decimal import Decimal

import httpx

from cqrs import CqrsFramework
from examples.bank_account.api import create_app
from examples.bank_account.auth import ApiKeys
from examples.bank_account.domain import DepositMoney, OpenAccount
from examples.bank_account.idempotency import KEY, KEY_RETENTION, REQUEST_HASH, request_hash
from examples.bank_account.service import BankService

AUTH = "p1-key-0123456789abcdef"
KEYS = ApiKeys.parse(f"p1:{AUTH}", "test keys")


async def bank(backend, repository=None) -> BankService:
    return await BankService.over(
        repository or await backend.open_repository(),
        view_table=backend.name("views"),
        projection_prefix=backend.name("bank"),
        idempotency_table=backend.name("keys"),
    )


def client(service: BankService) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(service, api_keys=KEYS)),
        base_url="http://bank",
        headers={"Authorization": f"Bearer {AUTH}"},
    )


async def deposit(http: httpx.AsyncClient, amount: object, key: str, account: str = "A1"):
    return await http.post(
        f"/accounts/{account}",
        json={"DepositMoney": {"amount": amount}},
        headers={"Idempotency-Key": key},
    )


async def test_a_repeated_key_returns_the_first_result_and_commits_nothing(backend):
    service = await bank(backend)
    async with client(service) as http:
        await http.post("/accounts/A1", json={"OpenAccount": {"account_id": "A1"}})
        first = await deposit(http, 5, "k-1")
        again = await deposit(http, 5, "k-1")
        assert (first.status_code, again.status_code) == (200, 200)
        assert again.json() == first.json()
        assert "Idempotent-Replayed" not in first.headers
        assert again.headers["Idempotent-Replayed"] == "true"
        other = await deposit(http, 7, "k-1")
        assert (other.status_code, other.json()["error"]) == (
            409,
            "this Idempotency-Key was used for another command on this account",
        )
        assert (await deposit(http, 5, "k-2")).status_code == 200  # a new key is a new command
        # The same key on another account is another command.
        await http.post("/accounts/B1", json={"OpenAccount": {"account_id": "B1"}})
        assert (await deposit(http, 5, "k-1", "B1")).headers.get("Idempotent-Replayed") is None
        view = (await http.get("/accounts/A1")).json()
    assert Decimal(str(view["balance"])) == 10
    events = await service.store.load_events("p1/A1")
    assert [e.metadata.get(KEY) for e in events] == [None, "k-1", "k-2"]


async def test_concurrent_retries_of_one_key_commit_once(backend):
    service = await bank(backend)
    async with client(service) as http:
        await http.post("/accounts/A1", json={"OpenAccount": {"account_id": "A1"}})
        answers = await asyncio.gather(*(deposit(http, 1, "same") for _ in range(12)))
        others = await asyncio.gather(*(deposit(http, 1, f"k{n}") for n in range(6)))
    assert {a.status_code for a in answers + others} == {200}
    assert len({a.json()[0]["event_id"] for a in answers}) == 1
    assert sum(a.headers.get("Idempotent-Replayed") == "true" for a in answers) == 11
    events = await service.store.load_events("p1/A1")
    assert len(events) == 1 + 1 + 6


async def test_keys_are_honoured_after_a_restart_and_when_the_index_missed_a_commit(backend):
    service = await bank(backend)
    async with client(service) as http:
        await http.post("/accounts/A1", json={"OpenAccount": {"account_id": "A1"}})
        first = await deposit(http, 3, "before-restart")
    # A process that committed a keyed deposit and died before updating any view: the key is
    # in the events' metadata only.
    bare = CqrsFramework(service.store, [], service.cqrs.services)
    command = DepositMoney(Decimal(4))
    await bare.execute_with_metadata(
        "p1/A1", command, {KEY: "unindexed", REQUEST_HASH: request_hash(command)}
    )
    # A new process over the same database (another repository where the backend persists).
    repository = backend.new_repository() if backend.has("persistent") else service.repository
    if repository is not service.repository:
        await repository.open()
    restarted = await bank(backend, repository)
    async with client(restarted) as http:
        again = await deposit(http, 3, "before-restart")
        lost = await deposit(http, 4, "unindexed")
        view = (await http.get("/accounts/A1")).json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert (lost.headers["Idempotent-Replayed"], lost.json()[0]["sequence"]) == ("true", 3)
    assert Decimal(str(view["balance"])) == 7
    assert len(await restarted.store.load_events("p1/A1")) == 3


async def test_a_refused_command_records_no_key(backend):
    service = await bank(backend)
    async with client(service) as http:
        await http.post("/accounts/A1", json={"OpenAccount": {"account_id": "A1"}})
        refused = await http.post(
            "/accounts/A1",
            json={"WithdrawMoney": {"amount": 5, "atm_id": "ATM-1"}},
            headers={"Idempotency-Key": "w"},
        )
        assert refused.status_code == 409
        await deposit(http, 5, "d")
        retried = await http.post(
            "/accounts/A1",
            json={"WithdrawMoney": {"amount": 5, "atm_id": "ATM-1"}},
            headers={"Idempotency-Key": "w"},
        )
    assert retried.status_code == 200  # decided again: nothing was committed the first time
    assert "Idempotent-Replayed" not in retried.headers


async def test_the_index_forgets_keys_after_the_retention(backend):
    from examples.bank_account.idempotency import IdempotencyIndex  # noqa: PLC0415

    service = await bank(backend)
    async with client(service) as http:
        await http.post("/accounts/A1", json={"OpenAccount": {"account_id": "A1"}})
        await deposit(http, 1, "old")
    events = await service.store.load_events("p1/A1")
    index = IdempotencyIndex()
    for event in events:
        index.update(event)
    assert set(index.keys) == {"old"}
    later = events[-1]
    later = type(later)(
        later.aggregate_type,
        later.aggregate_id,
        later.sequence + 1,
        later.payload,
        {},
        later.timestamp + KEY_RETENTION + timedelta(seconds=1),
        later.event_id,
        later.position + 1,
    )
    index.update(later)
    assert index.keys == {}


async def test_a_view_that_missed_its_update_is_brought_up_to_date_when_read(backend):
    service = await bank(backend)
    # A process that committed and died before updating the views.
    bare = CqrsFramework(service.store, [], service.cqrs.services)
    await bare.execute("p1/A1", OpenAccount("A1"))
    await bare.execute("p1/A1", DepositMoney(Decimal(9)))
    async with client(service) as http:
        view = await http.get("/accounts/A1")
    assert (view.status_code, view.json()["balance"]) == (200, 9)
    assert (await service.views.load_with_context("p1/A1")) is not None
