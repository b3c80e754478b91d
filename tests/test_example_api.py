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
from examples.bank_account.auth import ApiKeys
from examples.bank_account.service import BankService

KEY1, KEY2 = "p1-key-0123456789abcdef", "p2-key-0123456789abcdef"
KEYS = ApiKeys.parse(f"p1:{KEY1},p2:{KEY2}", "test keys")
AUTH1 = {"Authorization": f"Bearer {KEY1}"}
AUTH2 = {"Authorization": f"Bearer {KEY2}"}


def app_over(service: BankService, **options):
    return create_app(service, api_keys=KEYS, **options)


def http(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://bank", headers=AUTH1
    )


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
    async with http(app_over(service)) as client:
        yield client


async def post(client: httpx.AsyncClient, account: str, body: object, **kwargs) -> httpx.Response:
    return await client.post(f"/accounts/{account}", json=body, **kwargs)


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
        headers={"Content-Type": "application/json"},
    )
    assert check.status_code == 200
    assert '"balance":343.72' in check.text  # exact decimals, as JSON numbers
    refused = await post(client, "A1", {"WithdrawMoney": {"amount": 500, "atm_id": "ATM-N"}})
    assert (refused.status_code, refused.json()["error"]) == (409, "funds not available")
    assert refused.json()["request_id"] == refused.headers["X-Request-Id"]
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
    assert {e["aggregate_id"] for e in events} == {"A1"}
    assert {e["metadata"]["principal"] for e in events} == {"p1"}
    assert events[3]["metadata"]["request_id"] == check.headers["X-Request-Id"]
    page = (await client.get("/accounts/A1/events", params={"after": 1, "limit": 2})).json()
    assert [e["sequence"] for e in page] == [2, 3]
    assert (await client.get("/accounts/A1/events", params={"after": 4})).json() == []


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{not json", 400, "malformed JSON"),
        (b"[" * 100_000 + b"]" * 100_000, 413, "larger than"),
        (b"[" * 5_000 + b"]" * 5_000, 400, "nested too deeply"),
        (b'{"DepositMoney": {"amount": ' + b"[" * 1_000 + b"]" * 1_000 + b"}}", 400, "deeply"),
        (
            b'{"DepositMoney": {"amount": ' + b"[" * 100 + b"]" * 100 + b"}}",
            422,
            "DepositMoney.amount: must be a JSON number",
        ),
        (b"[1, 2]", 422, "naming exactly one command"),
        (b'{"A": {}, "B": {}}', 422, "naming exactly one command"),
        (b'{"CloseAccount": {}}', 422, "unknown command 'CloseAccount'"),
        (
            b'{"DepositMoney": {"amount": "lots"}}',
            422,
            "DepositMoney.amount: must be a JSON number",
        ),
        (b'{"DepositMoney": {"amount": "1"}}', 422, "must be a JSON number"),
        (b'{"DepositMoney": {"amount": true}}', 422, "must be a JSON number"),
        (b'{"DepositMoney": {}}', 422, "DepositMoney.amount: Field required"),
        (b'{"DepositMoney": {"amount": 1, "extra": 2}}', 422, "extra: Extra inputs"),
        (b'{"DepositMoney": {"amount": -5}}', 422, "positive"),
        (b'{"DepositMoney": {"amount": 0.001}}', 422, "at most 2 decimal places"),
        (b'{"DepositMoney": {"amount": 1e999999999}}', 422, "up to 1000000000"),
        (b'{"DepositMoney": {"amount": 1' + b"0" * 5000 + b"}}", 422, "out of range"),
        (b'{"WithdrawMoney": {"amount": 1, "atm_id": "BANK"}}', 409, "rejected"),
        (b'{"WithdrawMoney": {"amount": 1, "atm_id": "A\\u0000"}}', 422, "atm_id"),
        (b'{"OpenAccount": {"account_id": "A1"}}', 409, "already open"),
        (b'{"OpenAccount": {"account_id": "B"}}', 422, "OpenAccount names 'B', the path 'A1'"),
        (b'{"WriteCheck": {"check_number": "x1", "amount": 1}}', 422, "check_number"),
    ],
)
async def test_bad_requests_are_json_4xx_naming_the_problem(client, body, status, message):
    await post(client, "A1", {"OpenAccount": {"account_id": "A1"}})
    await post(client, "A1", {"DepositMoney": {"amount": 10}})
    response = await client.post(
        "/accounts/A1", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == status
    assert response.headers["Content-Type"] == "application/json"
    assert message in response.json()["error"]
    assert len((await client.get("/accounts/A1/events")).json()) == 2  # nothing stored


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "text/json"]
)
async def test_only_json_bodies_are_executed(client, content_type):
    await post(client, "A1", {"OpenAccount": {"account_id": "A1"}})
    headers = {} if content_type is None else {"Content-Type": content_type}
    response = await client.post(
        "/accounts/A1", content=b'{"DepositMoney": {"amount": 5}}', headers=headers
    )
    assert (response.status_code, response.json()["error"]) == (
        415,
        "the body must be application/json",
    )
    assert len((await client.get("/accounts/A1/events")).json()) == 1
    charset = {"Content-Type": "application/json; charset=utf-8"}
    accepted = await client.post(
        "/accounts/A1", content=b'{"DepositMoney": {"amount": 5}}', headers=charset
    )
    assert accepted.status_code == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/accounts/A%00"),
        ("GET", "/accounts/A%00"),
        ("GET", "/accounts/A%00/events"),
        ("GET", "/accounts/" + "a" * 65),
        ("GET", "/accounts/-a"),
        ("GET", "/accounts/A1/events?limit=1001"),
        ("GET", "/accounts/A1/events?after=-1"),
        ("GET", "/days/yesterday"),
        ("GET", "/atms/ATM%0A1"),
    ],
)
async def test_bad_ids_and_parameters_are_422(client, method, path):
    response = await client.request(method, path, json={"DepositMoney": {"amount": 1}})
    assert response.status_code == 422
    assert response.json()["error"]


async def test_unrouted_paths_and_wrong_methods_are_json(client):
    missing = await client.get("/nowhere")
    assert (missing.status_code, missing.json()["error"]) == (404, "not found")
    for path in ("/accounts/", "/accounts", "/accounts/A1/"):
        response = await client.post(path, json={"DepositMoney": {"amount": 1}})
        assert (response.status_code, response.json()["error"]) == (404, "not found")
    wrong = await client.delete("/accounts/A1")
    assert (wrong.status_code, wrong.json()["error"]) == (405, "method not allowed")
    assert wrong.headers["Allow"] == "GET, POST"
    assert (await client.put("/accounts/A1/events")).headers["Allow"] == "GET"


async def test_unknown_account_is_404_for_reads_and_commands(client):
    assert (await client.get("/accounts/nobody")).status_code == 404
    refused = await post(client, "nobody", {"DepositMoney": {"amount": 1}})
    assert (refused.status_code, refused.json()["error"]) == (404, "no account 'nobody'")
    assert (await client.get("/accounts/nobody/events")).status_code == 404


async def test_concurrent_deposits_give_an_exact_balance(client):
    await post(client, "A1", {"OpenAccount": {"account_id": "A1"}})
    responses = await asyncio.gather(
        *(
            client.post(
                "/accounts/A1",
                content=b'{"DepositMoney": {"amount": 0.01}}',
                headers={"Content-Type": "application/json"},
            )
            for _ in range(24)
        )
    )
    assert [r.status_code for r in responses] == [200] * 24
    view = (await client.get("/accounts/A1")).json()
    assert Decimal(str(view["balance"])) == Decimal("0.24")
    assert len(view["ledger"]) == 24


async def test_conflict_after_retries_is_409_and_unreachable_database_is_503(caplog):
    service = await BankService.over(await memory())
    app = app_over(service)

    async def conflicting(*args, **kwargs):
        raise AggregateConflict("always")

    async def unreachable(*args, **kwargs):
        raise DatabaseConnectionError("SQLite database /secret/path/bank.db is read-only")

    async with http(app) as c:
        await post(c, "A1", {"OpenAccount": {"account_id": "A1"}})
        service.store.commit = conflicting  # type: ignore[method-assign]
        conflict = await post(c, "A1", {"DepositMoney": {"amount": 1}})
        assert (conflict.status_code, conflict.json()["error"]) == (
            409,
            "the account is busy; try again",
        )
        service.store.load_aggregate = unreachable  # type: ignore[method-assign]
        with caplog.at_level(logging.WARNING, logger="examples.bank_account"):
            down = await post(c, "A1", {"DepositMoney": {"amount": 1}})
        assert down.status_code == 503
        assert down.json()["error"] == "the database is unavailable; try again later"
        assert "/secret/path" not in down.text  # logged with the request id, not sent
        assert f"[{down.json()['request_id']}] database unavailable" in caplog.text
        assert "/secret/path/bank.db" in caplog.text


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
    app = app_over(service)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://b", headers=AUTH1) as c:
        await post(c, "A1", {"OpenAccount": {"account_id": "A1"}})
        await post(c, "A1", {"DepositMoney": {"amount": 10}})
        with caplog.at_level(logging.ERROR, logger="examples.bank_account"):
            broken = await post(c, "A1", {"WithdrawMoney": {"amount": 1, "atm_id": "ATM-1"}})
        assert (broken.status_code, broken.json()["error"]) == (500, "internal error")
        assert "ATM driver bug" in caplog.text  # the details are logged, not sent
        assert broken.json()["request_id"] in caplog.text
        refused = await post(c, "A1", {"WithdrawMoney": {"amount": 99, "atm_id": "ATM-1"}})
        assert (refused.status_code, refused.json()["error"]) == (409, "funds not available")
        assert len((await c.get("/accounts/A1/events")).json()) == 2


async def test_cross_account_views_from_the_projections_run_by_the_server(backend):
    repository = await backend.open_repository()
    service = await BankService.over(
        repository, view_table=backend.name("views"), projection_prefix=backend.name("bank")
    )
    app = app_over(service, run_projections=True)
    async with app.router.lifespan_context(app), http(app) as client:
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
        others = (await client.get("/atms/ATM-1", headers=AUTH2)).json()
        assert (others["withdrawals"], others["accounts"]) == (2, [])  # only your accounts
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


async def test_the_openapi_document_describes_every_command_and_error():
    app = app_over(await BankService.over(await memory()))
    async with http(app) as client:
        schema = (await client.get("/openapi.json")).json()
        docs = await client.get("/docs")
        asset = await client.get("/docs/assets/swagger-ui-bundle.js")
    post = schema["paths"]["/accounts/{account_id}"]["post"]
    body = post["requestBody"]["content"]["application/json"]["schema"]
    assert [ref["$ref"].rsplit("/", 1)[1] for ref in body["oneOf"]] == [
        "OpenAccountBody",
        "DepositMoneyBody",
        "WithdrawMoneyBody",
        "WriteCheckBody",
    ]
    deposit = schema["components"]["schemas"]["DepositMoneyFields"]
    assert deposit["additionalProperties"] is False
    assert deposit["properties"]["amount"]["maximum"] == 1_000_000_000
    assert {"200", "400", "401", "404", "409", "413", "415", "422", "503"} <= set(post["responses"])
    error = post["responses"]["409"]["content"]["application/json"]["schema"]["$ref"]
    assert error.endswith("/ErrorBody")
    assert [p["name"] for p in post["parameters"]] == ["account_id", "Idempotency-Key"]
    events = schema["paths"]["/accounts/{account_id}/events"]["get"]
    assert {p["name"] for p in events["parameters"]} == {"account_id", "after", "limit"}
    # The docs page works offline: its scripts and styles are served by the app itself.
    assert docs.status_code == 200
    assert "/docs/assets/swagger-ui-bundle.js" in docs.text
    assert "cdn" not in docs.text.lower()
    assert "https://" not in docs.text
    assert (asset.status_code, len(asset.content) > 100_000) == (200, True)


async def test_a_closed_repository_is_a_500_not_the_clients_fault(caplog):
    service = await BankService.over(await memory())
    transport = httpx.ASGITransport(app=app_over(service), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://b", headers=AUTH1) as c:
        await post(c, "A1", {"OpenAccount": {"account_id": "A1"}})
        await service.close()
        with caplog.at_level(logging.ERROR, logger="examples.bank_account"):
            broken = await c.get("/accounts/A1")
    assert (broken.status_code, broken.json()["error"]) == (500, "internal error")
    assert "is not open" in caplog.text
