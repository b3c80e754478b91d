"""``python -m examples.bank_account serve|demo|project [--database-url URL]``.

``serve`` needs API keys (``$BANK_API_KEYS`` or ``--api-keys-file``; see
:mod:`examples.bank_account.auth`) unless ``--insecure-no-auth`` is given; ``demo`` runs the
domain in-process and needs none. Logging goes to stderr (``--log-level``, ``--log-json``);
traces and metrics go over OTLP when ``$OTEL_EXPORTER_OTLP_ENDPOINT`` is set (see
:mod:`examples.bank_account.observability`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import uuid
from collections.abc import Coroutine
from decimal import Decimal

import msgspec

from cqrs import CqrsError, ProjectionRunner, UserError, redact_url
from examples.bank_account.auth import ENVIRONMENT_VARIABLE, ApiKeys, ApiKeysError
from examples.bank_account.domain import DepositMoney, OpenAccount, WithdrawMoney, WriteCheck
from examples.bank_account.observability import export_telemetry, instrument_app, setup_logging
from examples.bank_account.preflight import check_sqlite_files
from examples.bank_account.service import DEFAULT_DATABASE_URL, BankService


async def demo(database_url: str) -> None:
    """Open an account, deposit, withdraw, write a check, try an overdraft; print it all."""
    service = await BankService.connect(database_url)
    try:
        account = f"demo-{uuid.uuid4().hex[:8]}"
        print(f"database: {redact_url(database_url)}\naccount:  {account}\n")
        for command in (
            OpenAccount(account),
            DepositMoney(Decimal(1000)),
            WithdrawMoney(Decimal(400), "ATM-N"),
            WriteCheck("1170", Decimal("256.28")),
            WithdrawMoney(Decimal(500), "ATM-N"),
        ):
            try:
                for envelope in await service.cqrs.execute(account, command):
                    print(f"  #{envelope.sequence} {envelope.payload!r}")
            except UserError as refused:
                print(f"  refused {command!r}: {refused}")
        view = await service.views.load(account)
        print("\nview:", _pretty(view))
        # The cross-account views are kept by projections, normally in their own process
        # (`project`); here one batch at a time until they have caught up.
        runner = service.projections.runner()
        while await runner.run_once():
            pass
        atm = await service.projections.atms.load("ATM-N")
        print("\nATM-N (projection bank_atms):", _pretty(atm))
        status = runner.status()
        for name, projection in status.items():
            print(f"projection {name}: checkpoint {projection.checkpoint}")
    finally:
        await service.close()


async def project(
    database_url: str, *, batch_size: int, lease_ttl: float, nats_url: str | None = None
) -> None:
    """Run the bank's projections until SIGTERM/SIGINT; another process running the same
    command stands by and takes over within the lease when this one stops or dies. With
    ``nats_url``, a publisher projection also sends every event to the JetStream stream
    ``BANK`` (subjects ``bank.BankAccount.<account>``; needs the ``nats`` extra)."""
    service = await BankService.connect(database_url)
    projections, nats = service.projections, None
    if not nats_url:
        runner = projections.runner(batch_size=batch_size, lease_ttl=lease_ttl)
    else:
        from cqrs_nats import JetStreamPublisher, connect_nats, ensure_stream  # noqa: PLC0415 - optional extra

        nats = await connect_nats(nats_url)
        await ensure_stream(nats, "BANK", prefix="bank")
        publisher = JetStreamPublisher(nats, "BANK", [service.store], prefix="bank")
        runner = ProjectionRunner(
            projections.repository,
            projections.checkpoints,
            [*projections.projections, publisher],
            batch_size=batch_size,
            lease_ttl=lease_ttl,
        )
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, runner.stop)
    print(f"projecting {redact_url(database_url)} as {runner.owner} (Ctrl-C stops)", flush=True)
    try:
        await runner.run()
    finally:
        if nats is not None:
            await nats.close()
        await service.close()
    for name, status in runner.status().items():
        print(f"projection {name}: {status.state}, checkpoint {status.checkpoint}")


def _pretty(value: object) -> str:
    return msgspec.json.format(msgspec.json.encode(value), indent=2).decode()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.bank_account")
    parser.add_argument("command", choices=["serve", "demo", "project"])
    parser.add_argument(
        "--database-url",
        default=os.environ.get("CQRS_DATABASE_URL", DEFAULT_DATABASE_URL),
        help="memory://, sqlite:///bank.db, postgresql://..., mongodb://... "
        "(default: $CQRS_DATABASE_URL or sqlite:///bank.db)",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--batch-size", type=int, default=100, help="project: events per batch")
    parser.add_argument(
        "--lease-ttl", type=float, default=10.0, help="project: seconds before a takeover"
    )
    parser.add_argument(
        "--nats-url",
        help="project: also publish every event to NATS JetStream (stream BANK, subjects "
        "bank.BankAccount.<account>), e.g. nats://127.0.0.1:4222",
    )
    parser.add_argument(
        "--project",
        action="store_true",
        help="serve: also run the projections in the server (e.g. for memory://)",
    )
    parser.add_argument(
        "--api-keys-file",
        help=f"serve: principal:KEY entries, one a line (default: ${ENVIRONMENT_VARIABLE})",
    )
    parser.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="serve: accept every request without a key (local play only)",
    )
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    parser.add_argument("--log-json", action="store_true", help="log JSON lines (with trace ids)")
    args = parser.parse_args(argv)
    setup_logging(
        args.log_level, as_json=args.log_json, force=args.command != "demo" or argv is None
    )
    args.exporting = export_telemetry()  # OTLP when $OTEL_EXPORTER_OTLP_ENDPOINT is set
    if args.command == "project":
        return _run(
            project(
                args.database_url,
                batch_size=args.batch_size,
                lease_ttl=args.lease_ttl,
                nats_url=args.nats_url,
            )
        )
    if args.command == "demo":
        return _run(demo(args.database_url))
    return serve(args)


def _run(coroutine: Coroutine[object, object, None]) -> int:
    try:
        asyncio.run(coroutine)
    except CqrsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def serve(args: argparse.Namespace) -> int:
    """Check the configuration, then run the API on uvicorn; 2 for a bad configuration."""
    keys: ApiKeys | None
    try:
        if args.api_keys_file:
            keys = ApiKeys.from_file(args.api_keys_file)
        else:
            keys = ApiKeys.from_environment(os.environ)
        if keys is None and not args.insecure_no_auth:
            print(
                f"error: no API keys: set ${ENVIRONMENT_VARIABLE} (principal:KEY,...) or pass "
                "--api-keys-file FILE; --insecure-no-auth serves without them (local play only)",
                file=sys.stderr,
            )
            return 2
        check_sqlite_files(args.database_url)
    except (ApiKeysError, CqrsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.insecure_no_auth:
        logging.getLogger("examples.bank_account").warning(
            "--insecure-no-auth: anyone who can reach %s:%d can move money", args.host, args.port
        )
    import uvicorn  # noqa: PLC0415 - only the server needs it

    from examples.bank_account.api import create_app  # noqa: PLC0415 - only the server needs it

    app = create_app(
        database_url=args.database_url,
        api_keys=keys,
        insecure_no_auth=args.insecure_no_auth,
        run_projections=args.project,
    )
    if args.exporting:
        instrument_app(app)
    uvicorn.run(app, host=args.host, port=args.port, log_config=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
