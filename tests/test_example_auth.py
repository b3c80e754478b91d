"""The example's API keys and who may see which account."""

from __future__ import annotations

import hashlib

import httpx
import pytest

from cqrs_memory import MemoryEventRepository
from examples.bank_account.__main__ import main
from examples.bank_account.api import create_app
from examples.bank_account.auth import ApiKeys, ApiKeysError, Principal
from examples.bank_account.service import BankService

KEY1, KEY2 = "p1-key-0123456789abcdef", "p2-key-0123456789abcdef"


async def service() -> BankService:
    repository = MemoryEventRepository()
    await repository.open()
    return await BankService.over(repository)


def client(app, key: str | None = KEY1) -> httpx.AsyncClient:
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    transport = httpx.ASGITransport(app=app)
    return httpx.AsyncClient(transport=transport, base_url="http://bank", headers=headers)


def test_keys_are_parsed_and_held_only_as_digests():
    digest = hashlib.sha256(KEY2.encode()).hexdigest()
    keys = ApiKeys.parse(f"p1:{KEY1}, # a comment\n p2:sha256:{digest.upper()}\n\n", "test")
    assert keys.authenticate(KEY1) == Principal("p1")
    assert keys.authenticate(KEY2) == Principal("p2")
    assert keys.authenticate(KEY1 + "x") is None
    assert len(keys) == 2
    assert KEY1 not in repr(keys)
    assert KEY1 not in repr(vars(keys))  # nothing but the digests is kept


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "test: no keys"),
        ("p1", "entry 1: expected principal:KEY"),
        ("p1:short", "entry 1 (p1): a key must be at least 16"),
        (f"p1:{KEY1},p/2:{KEY2}", "entry 2: expected principal:KEY"),
        ("p1:sha256:abc", "entry 1 (p1): sha256: must be followed by 64 hex digits"),
        (f"p1:{KEY1},p2:{KEY1}", "entry 2 (p2): the same key is given to two principals"),
        ("p1:with a space 0123456789", "without spaces"),
    ],
)
def test_bad_key_entries_are_named_without_the_key(text, message):
    with pytest.raises(ApiKeysError) as refused:
        ApiKeys.parse(text, "test")
    assert message in str(refused.value)
    assert KEY1 not in str(refused.value)


def test_keys_come_from_a_file_or_the_environment(tmp_path):
    path = tmp_path / "keys"
    path.write_text(f"# principals\np1:{KEY1}\n")
    assert ApiKeys.from_file(path).authenticate(KEY1) == Principal("p1")
    from_environment = ApiKeys.from_environment({"BANK_API_KEYS": f"p2:{KEY2}"})
    assert from_environment is not None
    assert from_environment.authenticate(KEY2) == Principal("p2")
    assert ApiKeys.from_environment({}) is None
    with pytest.raises(ApiKeysError, match="cannot read the API keys file"):
        ApiKeys.from_file(tmp_path / "missing")


async def test_without_a_valid_key_every_operation_is_401():
    app = create_app(await service(), api_keys=ApiKeys.parse(f"p1:{KEY1}", "test"))
    for key in (None, "wrong-key-0123456789", ""):
        async with client(app, key) as anonymous:
            for method, path in [
                ("POST", "/accounts/A1"),
                ("GET", "/accounts/A1"),
                ("GET", "/accounts/A1/events"),
                ("GET", "/atms/ATM-1"),
                ("GET", "/days/2026-01-01"),
                ("GET", "/projections"),
            ]:
                response = await anonymous.request(
                    method, path, json={"OpenAccount": {"account_id": "A1"}}
                )
                assert response.status_code == 401, (key, method, path)
                assert response.headers["WWW-Authenticate"] == "Bearer"
                assert "API key" in response.json()["error"]
    async with client(app, None) as anonymous:
        basic = await anonymous.get("/accounts/A1", headers={"Authorization": "Basic eDp5"})
        assert basic.status_code == 401


async def test_an_account_exists_only_for_the_principal_who_opened_it():
    bank = await service()
    app = create_app(bank, api_keys=ApiKeys.parse(f"p1:{KEY1},p2:{KEY2}", "test"))
    async with client(app, KEY1) as p1, client(app, KEY2) as p2:
        await p1.post("/accounts/A1", json={"OpenAccount": {"account_id": "A1"}})
        await p1.post("/accounts/A1", json={"DepositMoney": {"amount": 100}})
        for request in (
            p2.get("/accounts/A1"),
            p2.get("/accounts/A1/events"),
            p2.post("/accounts/A1", json={"DepositMoney": {"amount": 1}}),
            p2.post("/accounts/A1", json={"WithdrawMoney": {"amount": 1, "atm_id": "ATM-1"}}),
        ):
            response = await request
            assert (response.status_code, response.json()["error"]) == (404, "no account 'A1'")
        # p2 may open its own A1: a different account, and p1's is untouched.
        own = await p2.post("/accounts/A1", json={"OpenAccount": {"account_id": "A1"}})
        assert own.status_code == 200
        assert (await p2.get("/accounts/A1")).json()["balance"] == 0
        assert (await p1.get("/accounts/A1")).json()["balance"] == 100
    stored = {e.aggregate_id for e in await bank.store.load_events("p1/A1")}
    assert stored == {"p1/A1"}
    assert [e.metadata["principal"] for e in await bank.store.load_events("p2/A1")] == ["p2"]


async def test_insecure_mode_takes_every_caller_as_anonymous_and_says_so_in_the_schema():
    with pytest.raises(ValueError, match="no API keys"):
        create_app(await service())
    bank = await service()
    app = create_app(bank, insecure_no_auth=True)
    async with client(app, None) as anyone:
        opened = await anyone.post("/accounts/A1", json={"OpenAccount": {"account_id": "A1"}})
        assert opened.json()[0]["metadata"]["principal"] == "anonymous"
        assert "security" not in str((await anyone.get("/openapi.json")).json()["paths"])
    assert len(await bank.store.load_events("A1")) == 1  # ids are stored as given


async def test_the_schema_declares_bearer_auth():
    app = create_app(await service(), api_keys=ApiKeys.parse(f"p1:{KEY1}", "test"))
    async with client(app, None) as anyone:
        schema = (await anyone.get("/openapi.json")).json()
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert schema["paths"]["/accounts/{account_id}"]["get"]["security"] == [{"HTTPBearer": []}]


def test_serve_refuses_to_start_without_keys(capsys, monkeypatch):
    monkeypatch.delenv("BANK_API_KEYS", raising=False)
    assert main(["serve", "--database-url", "memory://"]) == 2
    error = capsys.readouterr().err
    assert "no API keys" in error
    assert "--insecure-no-auth" in error


def test_serve_refuses_a_bad_keys_file(tmp_path, capsys):
    path = tmp_path / "keys"
    path.write_text(f"p1:{KEY1}\nnot an entry\n")
    assert main(["serve", "--api-keys-file", str(path), "--database-url", "memory://"]) == 2
    error = capsys.readouterr().err
    assert "entry 2" in error
    assert KEY1 not in error
