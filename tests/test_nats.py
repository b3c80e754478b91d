"""Integration events on NATS JetStream (cqrs_nats) against the machine's NATS server
(CQRS_TEST_NATS_URL, default nats://127.0.0.1:4222): each test uses a stream and subject
prefix of its own and deletes the stream. The event store is SQLite. Fault cases (servers
of their own, killed processes) are in test_nats_faults.py, which imports the helpers here.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import nats.js.errors
import pytest
from hypothesis import given
from hypothesis import strategies as st
from nats.aio.client import Client
from nats.js.api import RetentionPolicy, StreamConfig

import cqrs
from cqrs import (
    ConfigurationError,
    CqrsFramework,
    EventEnvelope,
    PersistedEventRepository,
    PersistedEventStore,
    ProjectionRunner,
    ViewProjection,
)
from cqrs_conformance.bank_account import (
    AccountOpened,
    BankAccount,
    BankAccountServices,
    BankAccountView,
    CustomerDepositedMoney,
    DepositMoney,
    OpenAccount,
)
from cqrs_conformance.plugin import unusable
from cqrs_conformance.runner_process import Totals, update
from cqrs_nats import (
    BrokerUnavailableError,
    IntegrationEvent,
    JetStreamConsumer,
    JetStreamPublisher,
    PublishRefusedError,
    StreamSettingsError,
    check_stream,
    connect_nats,
    ensure_stream,
    escape_token,
    serialized_event,
    subject_for,
    unescape_token,
)

NATS_URL = os.environ.get("CQRS_TEST_NATS_URL", "nats://127.0.0.1:4222")
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


# -- helpers (test_nats_faults.py uses them too) -----------------------------------------------


async def connect_or_skip(url: str = NATS_URL) -> Client:
    try:
        return await connect_nats(url, timeout=3)
    except BrokerUnavailableError as error:
        unusable("nats", f"no NATS server at {url}: {error}")
        raise  # unreachable: unusable raises


@dataclass
class Stream:
    name: str
    prefix: str

    @classmethod
    def new(cls) -> Stream:
        tag = uuid.uuid4().hex[:12]
        return cls(f"T{tag}", f"t{tag}")


async def delete_stream(client: Client, name: str) -> None:
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await client.jetstream().delete_stream(name)


class Bank:
    """The bank account app on a SQLite file, with the checkpoints in the same database."""

    def __init__(self, repository: PersistedEventRepository, checkpoints: str = "projections"):
        self.repository = repository
        self.store = PersistedEventStore(repository, BankAccount)
        self.app = CqrsFramework(self.store, (), BankAccountServices())
        self.checkpoints = repository.checkpoint_store(checkpoints)
        self._accounts = itertools.count()

    @classmethod
    async def open(cls, path: Path) -> Bank:
        repository = await cqrs.connect(f"sqlite:///{path}")
        await repository.create_schema()
        bank = cls(repository)
        await bank.checkpoints.create_schema()
        return bank

    async def activity(
        self, accounts: int = 3, deposits: int = 4, metadata: dict[str, str] | None = None
    ) -> int:
        """Open accounts with deposits (in parallel across accounts); the last position."""

        async def account() -> None:
            name = f"acc-{next(self._accounts)}"
            await self.app.execute_with_metadata(name, OpenAccount(name), metadata or {})
            for amount in range(1, deposits + 1):
                await self.app.execute_with_metadata(
                    name, DepositMoney(Decimal(amount)), metadata or {}
                )

        await asyncio.gather(*(account() for _ in range(accounts)))
        return max([e.position async for e in self.store.stream_all_events()], default=0)

    async def envelopes(self) -> list[EventEnvelope[Any]]:
        return [envelope async for envelope in self.store.stream_all_events()]

    def runner(self, publisher: JetStreamPublisher, **options: Any) -> ProjectionRunner:
        options = {"poll_interval": 0.02, "retry_delay": 0.01, **options}
        return ProjectionRunner(self.repository, self.checkpoints, [publisher], **options)


@dataclass
class Stored:
    subject: str
    seq: int
    headers: dict[str, str]
    data: bytes


async def stored(client: Client, stream: str) -> list[Stored]:
    """Every message of the stream, in stream order."""
    js = client.jetstream()
    count = (await js.stream_info(stream)).state.messages
    messages: list[Stored] = []
    for seq in range(1, count + 1):
        raw = await js.get_msg(stream, seq)
        assert raw.subject is not None
        assert raw.seq is not None
        messages.append(Stored(raw.subject, raw.seq, dict(raw.headers or {}), raw.data or b""))
    return messages


def assert_each_event_once_in_aggregate_order(
    messages: list[Stored], envelopes: list[EventEnvelope[Any]], prefix: str
) -> None:
    ids = [m.headers["Nats-Msg-Id"] for m in messages]
    assert len(ids) == len(set(ids)), "an event was stored twice"
    assert sorted(ids) == sorted(str(e.event_id) for e in envelopes), "an event is missing"
    by_subject: dict[str, list[int]] = {}
    for message in messages:
        by_subject.setdefault(message.subject, []).append(int(message.headers["Cqrs-Sequence"]))
    for envelope in envelopes:
        subject = subject_for(prefix, envelope.aggregate_type, envelope.aggregate_id)
        sequences = by_subject[subject]
        assert sequences == sorted(sequences), f"{subject} out of order: {sequences}"


@contextlib.asynccontextmanager
async def running(runner: ProjectionRunner):
    task = asyncio.create_task(runner.run())
    try:
        yield task
    finally:
        runner.stop()
        try:
            await asyncio.wait_for(task, 10)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def eventually(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not await condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {seconds:g} s: {what}")
        await asyncio.sleep(0.02)


def account_views(repository: PersistedEventRepository, name: str, table: str) -> Any:
    """A ViewProjection of the consuming service: Totals per account (every position
    applied is listed, so an event applied twice shows)."""
    views = repository.view_repository(Totals, table)
    return ViewProjection(
        name,
        [PersistedEventStore(repository, BankAccount)],
        views,
        Totals,
        key=lambda envelope: envelope.aggregate_id,
        update=update,
    ), views


def expected_totals(envelopes: list[EventEnvelope[Any]]) -> dict[str, Totals]:
    expected: dict[str, Totals] = {}
    for envelope in envelopes:
        update(expected.setdefault(envelope.aggregate_id, Totals()), envelope)
    return expected


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
async def client():
    connection = await connect_or_skip()
    yield connection
    await connection.close()


@pytest.fixture
async def stream(client):
    names = Stream.new()
    yield names
    await delete_stream(client, names.name)


@pytest.fixture
async def bank(tmp_path):
    state = await Bank.open(tmp_path / "events.db")
    yield state
    await state.repository.close()


# -- subjects ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "token"),
    [
        ("acc-1", "acc-1"),
        ("a.b c", "a%2Eb%20c"),
        ("*>", "%2A%3E"),
        ("100%", "100%25"),
        ("tab\there", "tab%09here"),
        ("é", "%C3%A9"),
        ("", "%"),
    ],
)
def test_tokens_are_escaped_reversibly(value, token):
    assert escape_token(value) == token
    assert unescape_token(token) == value


@given(st.text())
def test_every_text_is_one_safe_token_that_round_trips(value):
    token = escape_token(value)
    assert token
    assert not set(token) & {".", "*", ">", " ", "\t", "\n", "\r"}
    assert all(0x21 <= ord(char) < 0x7F for char in token)
    assert unescape_token(token) == value


def test_subject_is_prefix_type_and_id():
    assert subject_for("events", "BankAccount", "a.1") == "events.BankAccount.a%2E1"


@pytest.mark.parametrize("prefix", ["", "a..b", "a.*", "a.>", "a b", ".a", 3])
def test_bad_prefix_is_refused_by_name(prefix):
    with pytest.raises(ConfigurationError, match="subject prefix"):
        JetStreamPublisher(None, "S", [], prefix=prefix)  # type: ignore[arg-type]


# -- streams ----------------------------------------------------------------------------------


async def test_ensure_stream_creates_a_limits_stream_once(client, stream):
    info = await ensure_stream(client, stream.name, prefix=stream.prefix, duplicate_window=90)
    assert info.config.retention == RetentionPolicy.LIMITS
    assert info.config.duplicate_window == 90
    assert info.config.subjects == [f"{stream.prefix}.>"]
    again = await ensure_stream(client, stream.name, prefix=stream.prefix, duplicate_window=90)
    assert again.config.duplicate_window == 90
    checked = await check_stream(client, stream.name, subjects=[f"{stream.prefix}.A.b"])
    assert checked.config.name == stream.name


async def test_stream_settings_that_cannot_dedup_are_named(client, stream):
    await ensure_stream(client, stream.name, prefix=stream.prefix, duplicate_window=1)
    with pytest.raises(StreamSettingsError, match=r"duplicate window is 1 s, shorter than 120 s"):
        await ensure_stream(client, stream.name, prefix=stream.prefix)
    with pytest.raises(StreamSettingsError, match=r"do not capture 'elsewhere\.>'"):
        await check_stream(client, stream.name, subjects=["elsewhere.>"], min_duplicate_window=1)
    with pytest.raises(StreamSettingsError, match="does not exist"):
        await check_stream(client, f"{stream.name}x")
    with pytest.raises(ConfigurationError, match="duplicate_window must be > 0"):
        await ensure_stream(client, stream.name, duplicate_window=0)


async def test_interest_retention_is_refused(client, stream):
    config = StreamConfig(
        name=stream.name,
        subjects=[f"{stream.prefix}.>"],
        retention=RetentionPolicy.INTEREST,
        duplicate_window=120,
    )
    await client.jetstream().add_stream(config)
    with pytest.raises(StreamSettingsError, match="retention is 'interest'"):
        await check_stream(client, stream.name)


# -- publishing -------------------------------------------------------------------------------


async def test_each_committed_event_is_published_once_with_its_headers(client, stream, bank):
    await ensure_stream(client, stream.name, prefix=stream.prefix)
    last = await bank.activity(accounts=4, deposits=5, metadata={"traceparent": TRACEPARENT})
    publisher = JetStreamPublisher(client, stream.name, [bank.store], prefix=stream.prefix)
    runner = bank.runner(publisher, batch_size=7)
    async with running(runner):
        await runner.wait_for(last, timeout=20)
        more = await bank.app.execute("acc-0", DepositMoney(Decimal(9)))  # live, after catch-up
        await runner.wait_for(more[-1].position, timeout=20)
    envelopes = await bank.envelopes()
    messages = await stored(client, stream.name)
    assert len(messages) == len(envelopes) == 25
    assert_each_event_once_in_aggregate_order(messages, envelopes, stream.prefix)
    by_id = {str(e.event_id): e for e in envelopes}
    for message in messages:
        envelope = by_id[message.headers["Nats-Msg-Id"]]
        assert message.subject == f"{stream.prefix}.BankAccount.{envelope.aggregate_id}"
        assert message.headers["Cqrs-Event-Type"] == type(envelope.payload).__name__
        assert message.headers["Cqrs-Event-Version"] == "1.0"
        assert message.headers["Cqrs-Aggregate-Type"] == "BankAccount"
        assert message.headers["Cqrs-Aggregate-Id"] == envelope.aggregate_id
        assert message.headers["Cqrs-Sequence"] == str(envelope.sequence)
        assert message.headers["Cqrs-Position"] == str(envelope.position)
        # the message decodes back into the very event the store holds
        assert bank.store.decode(serialized_event(message.data, message.headers)) == envelope
        if envelope.metadata:
            assert message.headers["traceparent"] == TRACEPARENT
    status = publisher.status()
    assert (status.state, status.connected, status.published) == ("publishing", True, 25)
    assert status.position == more[-1].position
    assert await bank.checkpoints.position(publisher.name) == more[-1].position


async def test_a_republish_within_the_window_is_a_no_op(client, stream, bank):
    await ensure_stream(client, stream.name, prefix=stream.prefix)
    last = await bank.activity(accounts=3, deposits=3)
    first = JetStreamPublisher(client, stream.name, [bank.store], prefix=stream.prefix)
    await first.handle(await bank.envelopes())
    again = JetStreamPublisher(client, stream.name, [bank.store], prefix=stream.prefix)
    again._suspect = False  # no look-up of what is stored: only the duplicate window acts
    await again.handle(await bank.envelopes())
    assert again.status().duplicates == 12
    assert again.status().published == 0
    assert len(await stored(client, stream.name)) == 12
    assert last == 12


async def test_a_republish_after_the_window_finds_what_is_stored(client, stream, bank):
    await ensure_stream(client, stream.name, prefix=stream.prefix, duplicate_window=0.2)
    last = await bank.activity(accounts=3, deposits=3)
    options = {"prefix": stream.prefix, "min_duplicate_window": 0.1}
    runner = bank.runner(JetStreamPublisher(client, stream.name, [bank.store], **options))
    async with running(runner):
        await runner.wait_for(last, timeout=20)
    await asyncio.sleep(0.5)  # past the duplicate window: JetStream would store them again
    await bank.checkpoints.reset("nats-publisher", 4)  # as if the checkpoint was lost
    publisher = JetStreamPublisher(client, stream.name, [bank.store], **options)
    runner = bank.runner(publisher, batch_size=5)
    async with running(runner):
        await runner.wait_for(last, timeout=20)
    assert publisher.status().skipped == 8
    assert publisher.status().published == 0
    envelopes = await bank.envelopes()
    assert_each_event_once_in_aggregate_order(
        await stored(client, stream.name), envelopes, stream.prefix
    )


async def test_a_stream_too_short_a_window_is_refused_before_publishing(client, stream, bank):
    await ensure_stream(client, stream.name, prefix=stream.prefix, duplicate_window=5)
    await bank.activity(accounts=1, deposits=1)
    publisher = JetStreamPublisher(client, stream.name, [bank.store], prefix=stream.prefix)
    with pytest.raises(StreamSettingsError, match="duplicate window is 5 s, shorter than 60 s"):
        await publisher.handle(await bank.envelopes())
    assert (await client.jetstream().stream_info(stream.name)).state.messages == 0


async def test_a_mapper_publishes_integration_events_and_drops_others(client, stream, bank):
    await ensure_stream(client, stream.name, prefix=stream.prefix)
    last = await bank.activity(accounts=2, deposits=2)

    def mapper(envelope: EventEnvelope[Any]) -> IntegrationEvent | None:
        if isinstance(envelope.payload, AccountOpened):
            return None
        assert isinstance(envelope.payload, CustomerDepositedMoney)
        body = {"account": envelope.aggregate_id, "cents": int(envelope.payload.amount * 100)}
        return IntegrationEvent("MoneyIn", body, "2.0", {"X-Source": "bank"})

    publisher = JetStreamPublisher(
        client, stream.name, [bank.store], prefix=stream.prefix, mapper=mapper
    )
    runner = bank.runner(publisher)
    async with running(runner):
        await runner.wait_for(last, timeout=20)
    messages = await stored(client, stream.name)
    assert len(messages) == 4
    assert publisher.status().dropped == 2
    for message in messages:
        assert message.headers["Cqrs-Event-Type"] == "MoneyIn"
        assert message.headers["Cqrs-Event-Version"] == "2.0"
        assert message.headers["X-Source"] == "bank"
        body = msgspec.json.decode(message.data)
        assert message.subject.endswith(f".{body['account']}")
    cents = sorted(msgspec.json.decode(m.data)["cents"] for m in messages)
    assert cents == [100, 100, 200, 200]


async def test_a_missing_stream_is_refused_not_retried_as_an_outage(client, stream, bank):
    await bank.activity(accounts=1, deposits=1)
    publisher = JetStreamPublisher(client, stream.name, [bank.store], prefix=stream.prefix)
    with pytest.raises(StreamSettingsError, match="does not exist"):
        await publisher.handle(await bank.envelopes())


# -- consuming --------------------------------------------------------------------------------


async def publish_all(client: Client, stream: Stream, bank: Bank) -> list[EventEnvelope[Any]]:
    await ensure_stream(client, stream.name, prefix=stream.prefix)
    publisher = JetStreamPublisher(client, stream.name, [bank.store], prefix=stream.prefix)
    await publisher.handle(await bank.envelopes())
    return await bank.envelopes()


async def consume(consumer: JetStreamConsumer, done, seconds: float = 20) -> None:
    task = asyncio.create_task(consumer.run())
    try:
        await eventually(done, seconds, f"consumer {consumer.durable}: {consumer.status()}")
    finally:
        consumer.stop()
        await asyncio.wait_for(task, 10)


@pytest.fixture
async def service(tmp_path):
    """The consuming service's own database."""
    repository = await cqrs.connect(f"sqlite:///{tmp_path / 'service.db'}")
    yield repository
    await repository.close()


async def test_a_consumer_feeds_a_view_projection_in_another_service(client, stream, bank, service):
    await bank.activity(accounts=3, deposits=4)
    envelopes = await publish_all(client, stream, bank)
    projection, views = account_views(service, "totals", "totals")
    await views.create_schema()
    consumer = JetStreamConsumer(client, stream.name, "svc", projection, prefix=stream.prefix)

    async def applied() -> bool:
        return consumer.status().applied == len(envelopes)

    await consume(consumer, applied)
    for account, expected in expected_totals(envelopes).items():
        assert await views.load(account) == expected
    info = await client.jetstream().consumer_info(stream.name, "svc")
    assert info.num_ack_pending == 0
    assert info.ack_floor.stream_seq == len(envelopes)
    # a second run of the durable consumer starts after what was acknowledged
    more = await bank.app.execute("acc-1", DepositMoney(Decimal(7)))
    publisher = JetStreamPublisher(client, stream.name, [bank.store], prefix=stream.prefix)
    await publisher.handle(more)
    second = JetStreamConsumer(client, stream.name, "svc", projection, prefix=stream.prefix)

    async def one() -> bool:
        return second.status().applied == 1

    await consume(second, one)
    assert await views.load("acc-1") == expected_totals(await bank.envelopes())["acc-1"]


async def test_a_failing_batch_is_redelivered_and_applied_once(client, stream, bank, service):
    await bank.activity(accounts=2, deposits=3)
    envelopes = await publish_all(client, stream, bank)
    inner, views = account_views(service, "totals", "totals")
    await views.create_schema()
    victim = envelopes[3].event_id
    failures: list[int] = []

    class Flaky:
        name, sources, event_types = inner.name, inner.sources, inner.event_types

        async def handle(self, events) -> None:
            if any(e.event_id == victim for e in events) and len(failures) < 2:
                failures.append(len(events))
                raise RuntimeError("the service's database hiccuped")
            await inner.handle(events)

    consumer = JetStreamConsumer(
        client, stream.name, "svc", Flaky(), prefix=stream.prefix, retry_delay=0.01
    )

    async def applied() -> bool:
        return consumer.status().applied == len(envelopes)

    await consume(consumer, applied)
    assert len(failures) == 2  # the batch, then the event alone
    assert consumer.status().retried >= 1
    for account, expected in expected_totals(envelopes).items():
        assert await views.load(account) == expected  # positions listed once each


async def test_an_event_failing_n_times_goes_to_the_dead_letter_subject(
    client, stream, bank, service
):
    await bank.activity(accounts=2, deposits=2)
    envelopes = await publish_all(client, stream, bank)
    dead = Stream.new()
    await ensure_stream(client, dead.name, prefix=dead.prefix)
    inner, views = account_views(service, "totals", "totals")
    await views.create_schema()
    poison = envelopes[2]

    class Picky:
        name, sources, event_types = inner.name, inner.sources, inner.event_types

        async def handle(self, events) -> None:
            if any(e.event_id == poison.event_id for e in events):
                raise ValueError("cannot handle this one")
            await inner.handle(events)

    consumer = JetStreamConsumer(
        client,
        stream.name,
        "svc",
        Picky(),
        prefix=stream.prefix,
        dead_letter_subject=f"{dead.prefix}.bank",
        dead_letter_after=3,
        retry_delay=0.01,
    )

    async def settled() -> bool:
        status = consumer.status()
        return status.dead_lettered == 1 and status.applied == len(envelopes) - 1

    try:
        await consume(consumer, settled)
        letters = await stored(client, dead.name)
    finally:
        await delete_stream(client, dead.name)
    assert len(letters) == 1
    assert letters[0].headers["Nats-Msg-Id"] == f"dead:{poison.event_id}"
    assert "cannot handle this one" in letters[0].headers["Cqrs-Error"]
    assert letters[0].headers["Cqrs-Sequence"] == str(poison.sequence)
    rest = [e for e in envelopes if e.event_id != poison.event_id]
    for account, expected in expected_totals(rest).items():
        assert await views.load(account) == expected
    info = await client.jetstream().consumer_info(stream.name, "svc")
    assert info.num_ack_pending == 0


# -- the benchmark ----------------------------------------------------------------------------


def test_the_benchmark_runs_every_side_and_writes_json(tmp_path, capsys):
    from benchmarks import nats_publish  # noqa: PLC0415 - only this test needs it

    async def reachable() -> None:
        await (await connect_or_skip()).close()

    asyncio.run(reachable())
    out = tmp_path / "rows.json"
    args = ["--url", NATS_URL, "--events", "40", "--aggregates", "2", "--batch", "7"]
    assert nats_publish.main([*args, "--runs", "1", "--json", str(out)]) == 0
    rows = msgspec.json.decode(out.read_bytes())
    assert {(row["workload"], row["side"]) for row in rows} == set(nats_publish.SIDES)
    assert all(row["events"] == 40 and row["events_per_s"] > 0 for row in rows)
    assert "bar: live >= 10,000 events/s end to end" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        nats_publish.parse_args(["--events", "5"])


# -- the README's two processes ---------------------------------------------------------------


ROOT = Path(__file__).resolve().parent.parent


def readme_file(title: str) -> str:
    readme = (ROOT / "README.md").read_text("utf-8")
    found = re.search(rf'```python title="{re.escape(title)}"\n(.*?)```', readme, re.DOTALL)
    assert found is not None, title
    return found.group(1)


def python(script: str, cwd: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-W", "error", script],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


async def test_the_readme_publisher_and_consumer_run_as_two_processes(client, stream, tmp_path):
    for title in ("publish.py", "consume.py"):
        code = readme_file(title).replace('"BANK"', f'"{stream.name}"')
        code = code.replace('prefix="bank"', f'prefix="{stream.prefix}"')
        (tmp_path / title).write_text(code.replace("nats://127.0.0.1:4222", NATS_URL), "utf-8")
    bank = await Bank.open(tmp_path / "bank.db")
    try:
        await bank.activity(accounts=2, deposits=2)
        expected: dict[str, BankAccountView] = {}
        for envelope in await bank.envelopes():
            expected.setdefault(envelope.aggregate_id, BankAccountView()).update(envelope)
    finally:
        await bank.repository.close()
    processes = [python(title, tmp_path) for title in ("publish.py", "consume.py")]
    try:
        service = None

        async def views_match() -> bool:
            nonlocal service
            if service is None:
                if not (tmp_path / "service.db").exists():
                    return False
                service = await cqrs.connect(f"sqlite:///{tmp_path / 'service.db'}")
            views = service.view_repository(BankAccountView, "accounts")
            with contextlib.suppress(Exception):  # the table may not exist yet
                return all([await views.load(a) == v for a, v in expected.items()])
            return False

        try:
            await eventually(views_match, 30, "the consumer's views match the events")
        finally:
            if service is not None:
                await service.close()
    finally:
        outputs = []
        for process in processes:
            process.send_signal(signal.SIGTERM)
            outputs.append(process.communicate(timeout=30))
    for process, (_, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err.decode()
        assert b"Exception ignored" not in err, err.decode()


# -- the surface ------------------------------------------------------------------------------


def test_all_is_sorted_complete_and_documented():
    import cqrs_nats  # noqa: PLC0415 - the module itself is under test

    def isort(name: str) -> tuple[int, str]:  # constants, classes, functions (ruff's order)
        return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)

    assert list(cqrs_nats.__all__) == sorted(cqrs_nats.__all__, key=isort)
    modules = {"consumer", "messages", "publisher", "streams", "subjects"}
    public = {name for name in dir(cqrs_nats) if not name.startswith("_")} - modules
    assert public == set(cqrs_nats.__all__)
    for name in cqrs_nats.__all__:
        assert getattr(cqrs_nats, name).__doc__, f"{name} has no docstring"


@pytest.mark.parametrize(
    ("options", "culprit"),
    [({"max_in_flight": 0}, "max_in_flight"), ({"ack_timeout": 0}, "ack_timeout")],
)
def test_bad_publisher_options_are_named(options, culprit):
    with pytest.raises(ConfigurationError, match=culprit):
        JetStreamPublisher(None, "S", [], **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("options", "culprit"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"dead_letter_after": 0}, "dead_letter_after"),
        ({"ack_wait": 0}, "ack_wait"),
    ],
)
def test_bad_consumer_options_are_named(options, culprit, bank):
    projection = ViewProjection("p", [bank.store], None, Totals, key=str, update=update)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=culprit):
        JetStreamConsumer(None, "S", "d", projection, **options)  # type: ignore[arg-type]


def test_a_message_without_the_headers_names_what_is_missing():
    with pytest.raises(cqrs.DeserializationError, match="no 'Cqrs-Aggregate-Type' header"):
        serialized_event(b"{}", {"Nats-Msg-Id": "x"})
    headers = {
        "Nats-Msg-Id": str(uuid.uuid4()),
        "Cqrs-Aggregate-Type": "A",
        "Cqrs-Aggregate-Id": "a%2E1",
        "Cqrs-Sequence": "two",
        "Cqrs-Event-Type": "E",
        "Cqrs-Event-Version": "1.0",
        "Cqrs-Position": "3",
        "Cqrs-Timestamp": "2026-01-01T00:00:00+00:00",
    }
    with pytest.raises(cqrs.DeserializationError, match="malformed header"):
        serialized_event(b"{}", headers)
    assert serialized_event(b"{}", {**headers, "Cqrs-Sequence": "2"}).aggregate_id == "a.1"


async def test_events_a_consumer_does_not_handle_are_acknowledged_unhandled(
    client, stream, bank, service
):
    await bank.activity(accounts=2, deposits=2)
    envelopes = await publish_all(client, stream, bank)
    seen: list[str] = []
    store = PersistedEventStore(service, BankAccount)

    class DepositsOnly:
        name, sources, event_types = "deposits", (store,), {"CustomerDepositedMoney"}

        async def handle(self, events) -> None:
            seen.extend(type(e.payload).__name__ for e in events)

    consumer = JetStreamConsumer(client, stream.name, "svc", DepositsOnly(), prefix=stream.prefix)

    async def settled() -> bool:
        status = consumer.status()
        return status.applied + status.ignored == len(envelopes)

    await consume(consumer, settled)
    assert seen == ["CustomerDepositedMoney"] * 4
    assert (consumer.status().applied, consumer.status().ignored) == (4, 2)


async def test_a_mapper_returning_something_else_is_named(client, stream, bank):
    await ensure_stream(client, stream.name, prefix=stream.prefix)
    await bank.activity(accounts=1, deposits=1)
    publisher = JetStreamPublisher(
        client,
        stream.name,
        [bank.store],
        prefix=stream.prefix,
        mapper=lambda envelope: {"not": "an IntegrationEvent"},  # type: ignore[arg-type]
    )
    with pytest.raises(TypeError, match=r"mapper returned \{'not'.*BankAccount 'acc-0' sequence 1"):
        await publisher.handle(await bank.envelopes())


async def test_a_message_nats_refuses_is_not_taken_for_an_outage(client, stream, bank):
    await ensure_stream(client, stream.name, prefix=stream.prefix)
    await bank.activity(accounts=1, deposits=1)
    publisher = JetStreamPublisher(
        client,
        stream.name,
        [bank.store],
        prefix=stream.prefix,
        mapper=lambda envelope: IntegrationEvent("E", b"{}", headers={"bad key:": "x"}),
    )
    with pytest.raises(PublishRefusedError, match="NATS refused a message"):
        await publisher.handle(await bank.envelopes())
    assert publisher.status().state != "paused"


async def test_a_consumer_started_before_its_stream_waits_for_it(client, stream, bank, service):
    projection, views = account_views(service, "totals", "totals")
    await views.create_schema()
    consumer = JetStreamConsumer(
        client, stream.name, "svc", projection, prefix=stream.prefix, retry_delay=0.01
    )
    with pytest.raises(StreamSettingsError, match=f"stream '{stream.name}' does not exist"):
        await consumer.run_once()
    task = asyncio.create_task(consumer.run())
    try:

        async def paused() -> bool:
            status = consumer.status()
            return status.state == "paused" and stream.name in (status.error or "")

        await eventually(paused, 10, "the consumer says it waits for the stream")
        await bank.activity(accounts=1, deposits=1)
        envelopes = await publish_all(client, stream, bank)

        async def applied() -> bool:
            return consumer.status().applied == len(envelopes)

        await eventually(applied, 20, "the consumer applied the events")
        assert consumer.status().state == "running"
    finally:
        consumer.stop()
        await asyncio.wait_for(task, 10)


async def test_a_stream_that_does_not_capture_the_subjects_is_refused(client, stream, bank):
    await ensure_stream(client, stream.name, subjects=[f"{stream.prefix}.Other.*"])
    await bank.activity(accounts=1, deposits=1)
    publisher = JetStreamPublisher(client, stream.name, [bank.store], prefix=stream.prefix)
    with pytest.raises(
        StreamSettingsError, match=rf"do not capture '{stream.prefix}\.BankAccount\.\*'"
    ):
        await publisher.handle(await bank.envelopes())


async def test_a_consumer_skips_an_event_id_it_acknowledged_before(client, stream, bank, service):
    await ensure_stream(client, stream.name, prefix=stream.prefix, duplicate_window=0.1)
    await bank.activity(accounts=1, deposits=1)
    envelopes = await bank.envelopes()
    options = {"prefix": stream.prefix, "min_duplicate_window": 0.1}
    first = JetStreamPublisher(client, stream.name, [bank.store], **options)
    await first.handle(envelopes)
    await asyncio.sleep(0.3)  # past the window: the same events are stored a second time
    again = JetStreamPublisher(client, stream.name, [bank.store], **options)
    again._suspect = False  # no look-up either: a publisher that knows nothing
    await again.handle(envelopes)
    assert len(await stored(client, stream.name)) == 4
    seen: list[str] = []
    store = PersistedEventStore(service, BankAccount)

    class Spy:
        name, sources, event_types = "spy", (store,), None

        async def handle(self, events) -> None:
            seen.extend(str(e.event_id) for e in events)

    consumer = JetStreamConsumer(client, stream.name, "svc", Spy(), prefix=stream.prefix)

    async def settled() -> bool:
        return consumer.status().applied + consumer.status().ignored == 4

    await consume(consumer, settled)
    assert sorted(seen) == sorted(str(e.event_id) for e in envelopes)  # each once
    assert consumer.status().ignored == 2
