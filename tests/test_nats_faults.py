"""Faults around NATS JetStream publishing and consuming, each on a ``nats-server -js`` this
module starts on a free port with its own storage directory (skipped when the binary is
absent, failed when CQRS_TEST_REQUIRE names nats): a publisher SIGKILLed mid-batch and
restarted, NATS restarted while publishing, a consumer killed after its projection
committed and before its acknowledgement. Also: JetStream switched off is a clear error.

Run as a script, this file is the publisher or consumer process those tests kill:
``python tests/test_nats_faults.py publish|consume ...`` (see ``main``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest
from test_nats import (
    Bank,
    Stream,
    account_views,
    assert_each_event_once_in_aggregate_order,
    eventually,
    expected_totals,
    running,
    stored,
)

import cqrs
from cqrs_conformance.bank_account import DepositMoney
from cqrs_conformance.plugin import unusable
from cqrs_nats import (
    JetStreamConsumer,
    JetStreamPublisher,
    JetStreamUnavailableError,
    connect_nats,
    ensure_stream,
)

HERE = Path(__file__)


class SlowPublisher(JetStreamPublisher):
    """Pauses ``wave_delay`` seconds before each wave of messages, so that a fault lands in
    the middle of a batch on a fast machine too."""

    wave_delay = 0.0

    async def _publish_wave(self, js, wave) -> None:
        await asyncio.sleep(self.wave_delay)
        await super()._publish_wave(js, wave)


def slow(publisher: SlowPublisher, delay: float) -> SlowPublisher:
    publisher.wave_delay = delay
    return publisher


class NatsServer:
    """A nats-server of the test's own, on a free port, with its own storage directory."""

    def __init__(self, workdir: Path, *, jetstream: bool = True) -> None:
        binary = shutil.which("nats-server")
        if binary is None:
            unusable("nats", "the nats-server binary is not on PATH (fault tests start one)")
        assert binary is not None
        self.binary, self.workdir, self.jetstream = binary, workdir, jetstream
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"nats://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [self.binary, "-a", "127.0.0.1", "-p", str(self.port)]
        if self.jetstream:
            command += ["-js", "-sd", str(self.workdir / "jetstream")]
        log = (self.workdir / "nats-server.log").open("ab")
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"nats-server did not start: {(self.workdir / 'nats-server.log')}")
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


@pytest.fixture
def server(tmp_path):
    own = NatsServer(tmp_path)
    own.start()
    yield own
    own.stop()


@pytest.fixture
async def bank(tmp_path):
    state = await Bank.open(tmp_path / "events.db")
    yield state
    await state.repository.close()


def child(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(HERE), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def finish(process: subprocess.Popen[bytes]) -> tuple[str, str]:
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=30)
    return out.decode(), err.decode()


async def test_jetstream_switched_off_is_a_clear_error(tmp_path):
    plain = NatsServer(tmp_path, jetstream=False)
    plain.start()
    try:
        client = await connect_nats(plain.url)
        try:
            with pytest.raises(JetStreamUnavailableError, match="start nats-server with -js"):
                await ensure_stream(client, "S", prefix="x")
        finally:
            await client.close()
    finally:
        plain.stop()


async def test_publisher_sigkilled_mid_batch_then_restarted_stores_each_event_once(
    server, bank, tmp_path
):
    stream = Stream.new()
    client = await connect_nats(server.url)
    try:
        await ensure_stream(client, stream.name, prefix=stream.prefix)
        last = await bank.activity(accounts=20, deposits=29)
        assert last == 600
        args = ["publish", str(tmp_path / "events.db"), server.url, stream.name, stream.prefix]
        first = child(*args, "--max-in-flight", "1", "--wave-delay", "0.003")
        js = client.jetstream()

        async def some_published() -> bool:
            return (await js.stream_info(stream.name)).state.messages >= 100

        await eventually(some_published, 30, "the publisher published 100 events")
        first.kill()  # SIGKILL, in the middle of its one batch of 1,000
        first.communicate(timeout=10)
        assert await bank.checkpoints.position("nats-publisher") == 0  # nothing checkpointed
        assert (await js.stream_info(stream.name)).state.messages < 600  # mid-batch indeed

        second = child(*args)

        async def caught_up() -> bool:
            return bool(await bank.checkpoints.position("nats-publisher") == last)

        try:
            await eventually(caught_up, 30, "the restarted publisher caught up")
        finally:
            out, err = finish(second)
        status = json.loads(out)
        assert status["skipped"] > 0, err  # what the killed one stored was not sent again
        assert_each_event_once_in_aggregate_order(
            await stored(client, stream.name), await bank.envelopes(), stream.prefix
        )
    finally:
        await client.close()


async def test_nats_restarted_while_publishing_loses_nothing(server, bank):
    stream = Stream.new()
    client = await connect_nats(server.url)
    try:
        await ensure_stream(client, stream.name, prefix=stream.prefix)
        await bank.activity(accounts=10, deposits=29)
        publisher = slow(
            SlowPublisher(
                client,
                stream.name,
                [bank.store],
                prefix=stream.prefix,
                max_in_flight=1,
                ack_timeout=1,
            ),
            0.005,
        )
        runner = bank.runner(publisher, batch_size=50)
        js = client.jetstream()
        async with running(runner):

            async def some_published() -> bool:
                return (await js.stream_info(stream.name)).state.messages >= 50

            await eventually(some_published, 30, "50 events published")
            server.stop()  # while a batch is being published

            async def paused() -> bool:
                status = publisher.status()
                return status.state == "paused" and not status.connected

            await eventually(paused, 30, "the publisher says it is paused")
            # commits go on while NATS is down
            more = [await bank.app.execute("acc-0", DepositMoney(Decimal(1))) for _ in range(5)]
            await asyncio.sleep(0.5)
            server.start()  # same port, same storage
            await runner.wait_for(more[-1][-1].position, timeout=60)
            assert publisher.status().state == "publishing"
            assert publisher.status().paused_since is None
        envelopes = await bank.envelopes()
        assert len(envelopes) == 305
        assert_each_event_once_in_aggregate_order(
            await stored(client, stream.name), envelopes, stream.prefix
        )
    finally:
        await client.close()


async def test_consumer_killed_before_ack_gets_the_events_again_and_applies_them_once(
    server, bank, tmp_path
):
    stream = Stream.new()
    client = await connect_nats(server.url)
    try:
        await ensure_stream(client, stream.name, prefix=stream.prefix)
        await bank.activity(accounts=2, deposits=3)
        envelopes = await bank.envelopes()
        publisher = JetStreamPublisher(client, stream.name, [bank.store], prefix=stream.prefix)
        await publisher.handle(envelopes)
        service = tmp_path / "service.db"
        args = ["consume", str(service), server.url, stream.name, stream.prefix]

        killed = child(*args, "--kill-after-commit")
        _, killed_err = killed.communicate(timeout=30)
        assert killed.returncode == -signal.SIGKILL, killed_err.decode()
        info = await client.jetstream().consumer_info(stream.name, "svc")
        assert info.num_ack_pending == len(envelopes)  # committed, never acknowledged

        restarted = child(*args)

        async def acknowledged() -> bool:
            info = await client.jetstream().consumer_info(stream.name, "svc")
            return bool(info.num_ack_pending == 0 and info.ack_floor.stream_seq == len(envelopes))

        try:
            await eventually(acknowledged, 30, "the restarted consumer acknowledged everything")
        finally:
            out, err = finish(restarted)
        assert json.loads(out)["applied"] == len(envelopes), err  # all handed over again
    finally:
        await client.close()
    repository = await cqrs.connect(f"sqlite:///{service}")
    try:
        _, views = account_views(repository, "totals", "totals")
        for account, expected in expected_totals(envelopes).items():
            assert await views.load(account) == expected  # each position applied once
    finally:
        await repository.close()


async def test_a_consumer_pauses_while_nats_is_down_and_resumes_by_itself(server, bank, tmp_path):
    stream = Stream.new()
    client = await connect_nats(server.url)
    service = await cqrs.connect(f"sqlite:///{tmp_path / 'service.db'}")
    try:
        await ensure_stream(client, stream.name, prefix=stream.prefix)
        await bank.activity(accounts=2, deposits=2)
        publisher = JetStreamPublisher(
            client, stream.name, [bank.store], prefix=stream.prefix, ack_timeout=1
        )
        await publisher.handle(await bank.envelopes())
        projection, views = account_views(service, "totals", "totals")
        await views.create_schema()
        consumer = JetStreamConsumer(
            client,
            stream.name,
            "svc",
            projection,
            prefix=stream.prefix,
            fetch_timeout=0.2,
            retry_delay=0.05,
        )
        task = asyncio.create_task(consumer.run())
        try:

            async def applied(count: int) -> bool:
                return consumer.status().applied == count

            await eventually(lambda: applied(6), 20, "the consumer applied the first events")
            server.stop()

            async def paused() -> bool:
                return consumer.status().state == "paused"

            await eventually(paused, 20, "the consumer says it is paused")
            server.start()
            more = await bank.app.execute("acc-0", DepositMoney(Decimal(3)))

            async def published() -> bool:
                with contextlib.suppress(cqrs.DatabaseConnectionError):
                    await publisher.handle(more)
                    return True
                return False

            await eventually(published, 30, "NATS took the new event after its restart")
            await eventually(lambda: applied(7), 30, "the consumer applied the new event")
            assert consumer.status().state == "running"
        finally:
            consumer.stop()
            await asyncio.wait_for(task, 10)
        for account, expected in expected_totals(await bank.envelopes()).items():
            assert await views.load(account) == expected
    finally:
        await service.close()
        await client.close()


# -- the processes ----------------------------------------------------------------------------


async def publish(options: argparse.Namespace) -> dict[str, object]:
    bank = await Bank.open(Path(options.database))
    client = await connect_nats(options.url)
    try:
        publisher = slow(
            SlowPublisher(
                client,
                options.stream,
                [bank.store],
                prefix=options.prefix,
                max_in_flight=options.max_in_flight,
            ),
            options.wave_delay,
        )
        runner = bank.runner(publisher, batch_size=1000, lease_ttl=1.0)
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, runner.stop)
        await runner.run()
        status = publisher.status()
        return {"published": status.published, "skipped": status.skipped}
    finally:
        await client.close()
        await bank.repository.close()


async def consume(options: argparse.Namespace) -> dict[str, object]:
    repository = await cqrs.connect(f"sqlite:///{options.database}")
    await repository.create_schema()
    client = await connect_nats(options.url)
    try:
        inner, views = account_views(repository, "totals", "totals")
        await views.create_schema()

        class KilledAfterCommit:
            name, sources, event_types = inner.name, inner.sources, inner.event_types

            async def handle(self, events) -> None:
                await inner.handle(events)
                os.kill(os.getpid(), signal.SIGKILL)  # committed; the ack never goes

        projection = KilledAfterCommit() if options.kill_after_commit else inner
        consumer = JetStreamConsumer(
            client, options.stream, "svc", projection, prefix=options.prefix, ack_wait=1.0
        )
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, consumer.stop)
        await consumer.run()
        return {"applied": consumer.status().applied}
    finally:
        await client.close()
        await repository.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["publish", "consume"])
    for name in ("database", "url", "stream", "prefix"):
        parser.add_argument(name)
    parser.add_argument("--max-in-flight", type=int, default=1000)
    parser.add_argument("--wave-delay", type=float, default=0.0)
    parser.add_argument("--kill-after-commit", action="store_true")
    options = parser.parse_args()
    role = publish if options.role == "publish" else consume
    print(json.dumps(asyncio.run(role(options))))  # noqa: T201 - the test reads it


if __name__ == "__main__":
    main()


def example(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "examples.bank_account", *args],
        cwd=HERE.parent.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


async def test_the_example_publishes_its_events_with_nats_url(server, tmp_path):
    database = f"sqlite:///{tmp_path / 'bank.db'}"
    demo = example("demo", "--database-url", database)
    _, demo_err = demo.communicate(timeout=60)
    assert demo.returncode == 0, demo_err.decode()
    project = example("project", "--database-url", database, "--nats-url", server.url)
    client = await connect_nats(server.url)
    try:
        js = client.jetstream()

        async def published() -> bool:
            with contextlib.suppress(Exception):  # the stream may not exist yet
                return (await js.stream_info("BANK")).state.messages == 4
            return False

        try:
            await eventually(published, 30, "the demo's 4 events are in stream BANK")
        finally:
            out, err = finish(project)
        assert project.returncode == 0, err
        assert "projection nats-publisher: stopped, checkpoint 4" in out
        messages = await stored(client, "BANK")
        assert {m.subject.rsplit(".", 1)[0] for m in messages} == {"bank.BankAccount"}
        assert [m.headers["Cqrs-Sequence"] for m in messages] == ["1", "2", "3", "4"]
    finally:
        await client.close()
