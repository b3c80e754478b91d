"""A Hypothesis fuzzer against the bank-account API: hostile bodies, ids, headers and content
types get a JSON 4xx, never a 5xx, never a crash, and store nothing."""

from __future__ import annotations

import json
import os
import re
from urllib.parse import quote

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cqrs_memory import MemoryEventRepository
from examples.bank_account.api import create_app
from examples.bank_account.auth import ApiKeys
from examples.bank_account.models import ID_PATTERN
from examples.bank_account.service import BankService

KEY = "fuzz-key-0123456789abcdef"
EXAMPLES = 1000 if os.environ.get("CQRS_TEST_STRESS") == "1" else 150

text = st.text(st.characters(exclude_categories=["Cs"]), max_size=80)
hostile_ids = st.one_of(
    text,
    st.sampled_from(["", "\x00", "A\x00", "a" * 65, "-a", ".", "..", "%00", "a/b", "é", "A\n1"]),
    st.text(min_size=65, max_size=300),
).filter(lambda s: re.fullmatch(ID_PATTERN, s) is None)
numbers = st.one_of(
    st.sampled_from(
        ["1e999999999", "-1e999999999", "1" + "0" * 5000, "0.001", "-0", "1e-999999", "0"]
    ),
    st.integers(max_value=0).map(str),
    st.decimals(allow_nan=False, allow_infinity=False, places=5)
    .map(str)
    .filter(lambda s: "." in s and not s.rstrip("0").endswith(".")),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(text, children, max_size=4),
    max_leaves=12,
)


def command_with(value: str) -> bytes:
    """A deposit, withdrawal or check whose amount is a hostile number literal."""
    return f'{{"DepositMoney": {{"amount": {value}}}}}'.encode()


hostile_bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    numbers.map(command_with),
    st.integers(1, 20_000).map(lambda depth: b'{"DepositMoney": ' + b"[" * depth + b"]" * depth),
    st.sampled_from(
        [
            b'{"DepositMoney": {"amount": 1, "x": 1}}',
            b'{"DepositMoney": {"amount": "1"}}',
            b'{"DepositMoney": {"amount": NaN}}',
            b'{"DepositMoney": {"amount": Infinity}}',
            b'{"WithdrawMoney": {"amount": 1, "atm_id": "\\u0000"}}',
            b'{"OpenAccount": {"account_id": "B"}}',
            b'{"OpenAccount": {"account_id": "A1"}}',
            b'{"WriteCheck": {"check_number": "1", "amount": 1e999999999}}',
            b"\xef\xbb\xbf{}",
            b'{"DepositMoney": {"amount": 1}}' + b" " * 20_000,
        ]
    ),
    json_values.map(lambda v: json.dumps({"DepositMoney": v}).encode()),
    json_values.map(lambda v: json.dumps({"WithdrawMoney": {"amount": 1, "atm_id": v}}).encode()),
)
content_types = st.sampled_from(
    [
        "application/json",
        "application/json; charset=utf-8",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        None,
    ]
)
header_values = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=200)


def is_json_4xx(response: httpx.Response) -> bool:
    if not 400 <= response.status_code < 500:
        return False
    if response.headers.get("content-type") != "application/json":
        return False
    body = response.json()
    return isinstance(body, dict) and isinstance(body.get("error"), str) and body["request_id"]


async def fresh_app():
    repository = MemoryEventRepository()
    await repository.open()
    service = await BankService.over(repository)
    app = create_app(service, api_keys=ApiKeys.parse(f"p1:{KEY}", "fuzz"))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    http = httpx.AsyncClient(
        transport=transport, base_url="http://bank", headers={"Authorization": f"Bearer {KEY}"}
    )
    opened = await http.post("/accounts/A1", json={"OpenAccount": {"account_id": "A1"}})
    assert opened.status_code == 200
    return service, http


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    account=st.one_of(st.just("A1"), hostile_ids),
    body=hostile_bodies,
    content_type=content_types,
    key=st.none() | header_values,
)
async def test_hostile_commands_get_a_json_4xx_and_store_nothing(account, body, content_type, key):
    service, http = await fresh_app()
    headers = {} if content_type is None else {"Content-Type": content_type}
    if key is not None:
        headers["Idempotency-Key"] = key
    try:
        url = f"/accounts/{quote(account, safe='')}"
        response = await http.post(url, content=body, headers=headers)
    finally:
        await http.aclose()
    assert is_json_4xx(response), (response.status_code, response.text[:300])
    assert len(await service.store.load_events("p1/A1")) == 1


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    account=hostile_ids,
    suffix=st.sampled_from(["", "/events", "/events?after=-1", "/events?limit=0"]),
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]),
)
async def test_hostile_ids_and_methods_get_a_json_4xx(account, suffix, method):
    _, http = await fresh_app()
    try:
        response = await http.request(
            method, f"/accounts/{quote(account, safe='')}{suffix}", json={"DepositMoney": {}}
        )
    finally:
        await http.aclose()
    assert is_json_4xx(response), (response.status_code, response.text[:300])
    if response.status_code == 405:
        assert response.headers["Allow"]
