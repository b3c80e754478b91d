"""Connecting to NATS and setting up the JetStream stream integration events go to.

:func:`ensure_stream` creates the stream, or checks an existing one, so that publishing is
exactly once: limits retention (messages stay after consumers read them, so the publisher
can look up the last event of an aggregate and other services can start late), file
storage, and a duplicate window at least as long as a republish can trail the first
publish. :func:`check_stream` only checks. Both raise :class:`JetStreamUnavailableError` when
the server has no JetStream, and :class:`StreamSettingsError` naming the setting that
cannot guarantee dedup.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js.api import RetentionPolicy, StorageType, StreamConfig, StreamInfo

from cqrs import ConfigurationError, DatabaseConnectionError, redact_url
from cqrs_nats.subjects import check_prefix

__all__ = [
    "DEFAULT_DUPLICATE_WINDOW",
    "BrokerUnavailableError",
    "JetStreamUnavailableError",
    "StreamSettingsError",
    "check_stream",
    "connect_nats",
    "ensure_stream",
]

logger = logging.getLogger("cqrs.nats")

DEFAULT_DUPLICATE_WINDOW = 120.0
"""Seconds: JetStream's own default; a republish after a crash comes within a lease ttl."""

NETWORK_ERRORS = (
    nats.errors.TimeoutError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.NoServersError,
    nats.errors.FlushTimeoutError,
    TimeoutError,
    OSError,
)
"""The driver errors that mean NATS cannot be reached now (retry later)."""


class BrokerUnavailableError(DatabaseConnectionError):
    """NATS cannot be reached now (down, restarting, or not answering in time). Nothing is
    known to be stored beyond what JetStream acknowledged; retrying later is safe. A
    :class:`~cqrs.DatabaseConnectionError`, so a projection runner retries it until NATS is
    back instead of counting it as the projection's failure."""


class JetStreamUnavailableError(ConfigurationError):
    """The NATS server answers but JetStream is not enabled (start it with ``-js``, or
    enable JetStream for the account)."""


class StreamSettingsError(ConfigurationError):
    """The stream is missing or its settings cannot guarantee exactly-once publishing; the
    message names the stream and the setting."""


async def connect_nats(
    url: str = "nats://127.0.0.1:4222",
    *,
    name: str | None = None,
    timeout: float = 5.0,  # noqa: ASYNC109 - bounds the first connection only
) -> Client:
    """A NATS client connected to ``url`` that reconnects forever after an outage (every
    half second; publishes made while it is away wait in its buffer, and the publisher
    reports the pause). Raise BrokerUnavailableError when the first connection fails within
    ``timeout`` seconds. Close it with ``await client.close()``."""

    async def on_error(error: Exception) -> None:
        logger.debug("NATS %s: %r", redact_url(url), error)

    async def on_disconnect() -> None:
        if not client.is_closed:  # a close() says nothing
            logger.warning("NATS %s: disconnected; reconnecting", redact_url(url))

    async def on_reconnect() -> None:
        logger.info("NATS %s: reconnected", redact_url(url))

    client = Client()
    try:
        async with asyncio.timeout(timeout):
            await client.connect(
                url,
                name=name,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,  # type: ignore[arg-type]  # seconds; typed as int
                connect_timeout=max(1, int(timeout)),
                error_cb=on_error,
                disconnected_cb=on_disconnect,
                reconnected_cb=on_reconnect,
            )
    except (*NETWORK_ERRORS, nats.errors.Error) as error:
        await client.close()
        msg = f"cannot connect to NATS at {redact_url(url)}: {error!r}"
        raise BrokerUnavailableError(msg) from error
    return client


async def ensure_stream(
    client: Client,
    name: str,
    *,
    prefix: str = "events",
    subjects: Sequence[str] | None = None,
    duplicate_window: float = DEFAULT_DUPLICATE_WINDOW,
    max_age: float | None = None,
    storage: StorageType = StorageType.FILE,
    replicas: int = 1,
) -> StreamInfo:
    """Create stream ``name`` for the subjects ``<prefix>.>`` (or ``subjects``) with limits
    retention, ``storage``, ``replicas``, ``duplicate_window`` seconds of dedup and
    ``max_age`` seconds of retention (None: kept until removed), or, when it exists, check
    it as :func:`check_stream` does with this ``duplicate_window`` as the minimum. Safe
    when several processes run it at once."""
    wanted = list(subjects) if subjects is not None else [f"{check_prefix(prefix)}.>"]
    if not duplicate_window > 0:
        msg = f"duplicate_window must be > 0 seconds, not {duplicate_window!r}"
        raise ConfigurationError(msg)
    js = client.jetstream()
    await _check_jetstream(client)
    config = StreamConfig(
        name=name,
        subjects=wanted,
        retention=RetentionPolicy.LIMITS,
        storage=storage,
        num_replicas=replicas,
        duplicate_window=duplicate_window,
        max_age=max_age,
    )
    try:
        return await js.add_stream(config)
    except nats.js.errors.BadRequestError as error:
        if error.err_code != 10058:  # noqa: PLR2004 - "stream name already in use"
            msg = f"JetStream refused to create stream {name!r}: {error.description}"
            raise StreamSettingsError(msg) from error
    except NETWORK_ERRORS as error:
        msg = f"NATS did not answer while creating stream {name!r}: {error!r}"
        raise BrokerUnavailableError(msg) from error
    return await check_stream(client, name, subjects=wanted, min_duplicate_window=duplicate_window)


async def check_stream(
    client: Client,
    name: str,
    *,
    subjects: Sequence[str] = (),
    min_duplicate_window: float = 60.0,
) -> StreamInfo:
    """Return the stream's info if it can take exactly-once publishing: it exists, keeps
    messages by limits (not interest or work queue), acknowledges publishes, captures each
    of ``subjects`` (exactly, or by a wildcard of the stream), and its duplicate window is
    at least ``min_duplicate_window`` seconds; else raise StreamSettingsError naming the
    setting (JetStreamUnavailableError when JetStream is off)."""
    await _check_jetstream(client)
    try:
        info = await client.jetstream().stream_info(name)
    except nats.js.errors.NotFoundError as error:
        msg = f"JetStream stream {name!r} does not exist: create it with ensure_stream()"
        raise StreamSettingsError(msg) from error
    except NETWORK_ERRORS as error:
        msg = f"NATS did not answer about stream {name!r}: {error!r}"
        raise BrokerUnavailableError(msg) from error
    config = info.config
    problems = []
    retention = getattr(config.retention, "value", config.retention)  # a str when read
    if retention not in (None, RetentionPolicy.LIMITS.value):
        problems.append(
            f"retention is {retention!r}; it must be 'limits' (other services "
            "read the events later, and the publisher looks up an aggregate's last event)"
        )
    if config.no_ack:
        problems.append("no_ack is set: publishes must be acknowledged")
    window = config.duplicate_window or 0.0
    if window < min_duplicate_window:
        problems.append(
            f"its duplicate window is {window:g} s, shorter than {min_duplicate_window:g} s "
            "(the time a republish after a crash or takeover can take): a republished event "
            "could be stored twice"
        )
    problems.extend(
        f"its subjects {config.subjects} do not capture {subject!r}"
        for subject in subjects
        if not any(_covers(pattern, subject) for pattern in config.subjects or ())
    )
    if problems:
        msg = f"JetStream stream {name!r} cannot guarantee exactly-once publishing: " + "; ".join(
            problems
        )
        raise StreamSettingsError(msg)
    return info


async def _check_jetstream(client: Client) -> None:
    try:
        await client.jetstream().account_info()
    except (nats.js.errors.ServiceUnavailableError, nats.errors.NoRespondersError) as error:
        url = redact_url(str(client.connected_url.geturl())) if client.connected_url else "?"
        msg = (
            f"JetStream is not enabled on the NATS server at {url}: start nats-server with "
            "-js (or enable JetStream for this account)"
        )
        raise JetStreamUnavailableError(msg) from error
    except NETWORK_ERRORS as error:
        msg = f"NATS did not answer a JetStream request: {error!r}"
        raise BrokerUnavailableError(msg) from error


def _covers(pattern: str, subject: str) -> bool:
    """Whether the stream subject ``pattern`` captures every subject ``subject`` matches."""
    want, have = subject.split("."), pattern.split(".")
    for index, token in enumerate(have):
        if token == ">":  # noqa: S105 - a subject token
            return len(want) > index
        if index >= len(want):
            return False
        if token not in ("*", want[index]):
            return False
        if want[index] == ">" and token != ">":  # noqa: S105
            return False
    return len(want) == len(have)
