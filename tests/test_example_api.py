"""The bank-account HTTP API, driven in-process, on every backend."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from decimal import Decimal

import httpx
import pytest

from cqrs import AggregateConflict, DatabaseConnectionError
from cqrs_memory import MemoryEventRepository
from examples.bank_account.__main__ import main
from examples.bank_account.api import create_app
from examples.bank_account.service import BankService


async def memory() -> MemoryEventRepository:
    """An open in-memory repository (every repository must be open to be used)."""
    repository = MemoryEventRepository()
    await repository.open()
    return repository


@pytest.fixture
async def client(backend) -> AsyncIterator[httpx.AsyncClient]:
    repository = await backend.open_repository()
    service = await BankService.over(
        repository,
        snapshot_every=3,
        view_table=backend.name("views"),
        projection_prefix=backend.name("bank"),
    )
    transport = httpx.ASGITransport(app=create_app(service))
    async with httpx.AsyncClient(transport=transport, base_url="http://bank") as client:
        yield client


async def post(client: httpx.AsyncClient, account: str, body: object) -> httpx.Response:
    return await client.post(f"/accounts/{account}", json=body)


async def test_the_demo_scenario_over_http(client):
    opened = await post(client, "A1", {"OpenAccount": {"account_id": "A1"}})
    assert opened.status_code == 200
    assert opened.json()[0]["event_type"] == "AccountOpened"
    assert (await post(client, "A1", {"DepositMoney": {"amount": 1000}})).status_code == 200
    withdrawn = await post(client, "A1", {"WithdrawMoney": {"amount": 400, "atm_id": "ATM-N"}})
    assert withdrawn.json()[0]["payload"] == {"amount": 400, "balance": 600, "atm_id": "ATM-N"}
    check = await client.post(
        "/accounts/A1",
        content=b'{"WriteCheck": {"check_number": "1170", "amount": 256.28}}',
    )
    assert check.status_code == 200
    assert '"balance":343.72' in check.text  # exact decimals, as JSON numbers
    refused = await post(client, "A1", {"WithdrawMoney": {"amount": 500, "atm_id": "ATM-N"}})
    assert (refused.status_code, refused.json()) == (400, {"error": "funds not available"})
    view = (await client.get("/accounts/A1")).json()
    assert view["account_id"] == "A1"
    assert Decimal(str(view["balance"])) == Decimal("343.72")
    assert view["written_checks"] == ["1170"]
    assert [entry["description"] for entry in view["ledger"]] == [
        "deposit",
        "atm withdrawal",
        "check 1170",
    ]
    events = (await client.get("/accounts/A1/events")).json()
    assert [e["sequence"] for e in events] == [1, 2, 3, 4]
    assert events[3]["payload"]["check_number"] == "1170"


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{not json", 422, "malformed JSON"),
        (b"[1, 2]", 422, "JSON object naming one command"),
        (b'{"A": {}, "B": {}}', 422, "exactly one command"),
        (b'{"CloseAccount": {}}', 422, "unknown command 'CloseAccount'"),
        (b'{"DepositMoney": {"amount": "lots"}}', 422, "invalid DepositMoney"),
        (b'{"DepositMoney": {}}', 422, "amount"),
        (b'{"DepositMoney": {"amount": -5}}', 400, "positive"),
        (b'{"WithdrawMoney": {"amount": 1, "atm_id": "BANK"}}', 400, "rejected"),
        (b'{"OpenAccount": {"account_id": "A1"}}', 400, "already open"),
    ],
)
async def test_bad_requests_name_the_problem(client, body, status, message):
    await post(client, "A1", {"OpenAccount": {"account_id": "A1"}})
    await post(client, "A1", {"DepositMoney": {"amount": 10}})
    response = await client.post("/accounts/A1", content=body)
    assert response.status_code == status
    assert message in response.json()["error"]


async def test_unknown_account_is_404_and_commands_on_it_are_refused(client):
    assert (await client.get("/accounts/nobody")).status_code == 404
    refused = await post(client, "nobody", {"DepositMoney": {"amount": 1}})
    assert (refused.status_code, refused.json()["error"]) == (400, "account not open")
    assert (await client.get("/accounts/nobody/events")).json() == []


async def test_concurrent_deposits_give_an_exact_balance(client):
    await post(client, "A1", {"OpenAccount": {"account_id": "A1"}})
    responses = await asyncio.gather(
        *(
            client.post("/accounts/A1", content=b'{"DepositMoney": {"amount": 0.01}}')
            for _ in range(24)
        )
    )
    assert [r.status_code for r in responses] == [200] * 24
    view = (await client.get("/accounts/A1")).json()
    assert Decimal(str(view["balance"])) == Decimal("0.24")
    assert len(view["ledger"]) == 24


async def test_conflict_after_retries_is_409_and_unreachable_database_is_503():
    service = await BankService.over(await memory())
    app = create_app(service)

    async def conflicting(*args, **kwargs):
        raise AggregateConflict("always")

    async def unreachable(*args, **kwargs):
        raise DatabaseConnectionError("connection refused")

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://b") as c:
        await post(c, "A1", {"OpenAccount": {"account_id": "A1"}})
        service.store.commit = conflicting  # type: ignore[method-assign]
        conflict = await post(c, "A1", {"DepositMoney": {"amount": 1}})
        assert conflict.status_code == 409
        service.store.load_aggregate = unreachable  # type: ignore[method-assign]
        down = await post(c, "A1", {"DepositMoney": {"amount": 1}})
        assert (down.status_code, "unavailable" in down.json()["error"]) == (503, True)


def test_demo_command_runs(capsys):
    assert main(["demo", "--database-url", "memory://"]) == 0
    output = capsys.readouterr().out
    assert "refused WithdrawMoney" in output
    assert '"balance": "343.72"' in output


async def test_a_bug_in_the_handler_is_a_500_not_a_refusal(caplog):
    class BrokenAtm:
        async def withdrawal(self, atm_id, account_id, amount):
            raise RuntimeError("ATM driver bug")

    service = await BankService.over(await memory())
    service.cqrs.services.atm = BrokenAtm()
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(create_app(service)), base_url="http://b"
    ) as c:
        await post(c, "A1", {"OpenAccount": {"account_id": "A1"}})
        await post(c, "A1", {"DepositMoney": {"amount": 10}})
        with caplog.at_level(logging.ERROR, logger="examples.bank_account"):
            broken = await post(c, "A1", {"WithdrawMoney": {"amount": 1, "atm_id": "ATM-1"}})
        assert (broken.status_code, broken.json()) == (500, {"error": "internal error"})
        assert "ATM driver bug" in caplog.text  # the details are logged, not sent
        refused = await post(c, "A1", {"WithdrawMoney": {"amount": 99, "atm_id": "ATM-1"}})
        assert (refused.status_code, refused.json()) == (400, {"error": "funds not available"})
        assert len((await c.get("/accounts/A1/events")).json()) == 2


async def test_cross_account_views_from_the_projections_run_by_the_server(backend):
    repository = await backend.open_repository()
    service = await BankService.over(
        repository, view_table=backend.name("views"), projection_prefix=backend.name("bank")
    )
    app = create_app(service, run_projections=True)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://bank") as client,
    ):
        for account in ("A", "B"):
            await post(client, account, {"OpenAccount": {"account_id": account}})
            await post(client, account, {"DepositMoney": {"amount": 100}})
        for account, atm, amount in (("A", "ATM-1", 10), ("B", "ATM-1", 5), ("A", "ATM-2", 1)):
            body = {"WithdrawMoney": {"amount": amount, "atm_id": atm}}
            last = (await post(client, account, body)).json()[-1]
        await app.state.runner.wait_for(last["position"], timeout=10)
        atm = (await client.get("/atms/ATM-1")).json()
        assert (atm["withdrawals"], Decimal(str(atm["total"])), atm["accounts"]) == (
            2,
            Decimal(15),
            ["A", "B"],
        )
        day = last["timestamp"][:10]
        totals = (await client.get(f"/days/{day}")).json()
        assert (Decimal(str(totals["deposits"])), Decimal(str(totals["withdrawals"]))) == (
            Decimal(200),
            Decimal(16),
        )
        assert totals["events"] == 7
        status = (await client.get("/projections")).json()
        assert status["bank_atms"]["checkpoint"] == last["position"]
        assert status["bank_atms"]["state"] == "running"
        missing = await client.get("/atms/ATM-9")
        assert (missing.status_code, "error" in missing.json()) == (404, True)
