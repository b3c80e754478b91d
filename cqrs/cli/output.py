"""How the command line talks: redacted text and JSON on stdout, errors and progress on
stderr, and the exit codes.

Every line goes through :meth:`Output.scrub`, which removes the passwords of the URLs the
command was given (and any ``scheme://user:password@`` it meets), so a password cannot leak
through a driver's error message or a log line either.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from urllib.parse import parse_qsl, unquote, urlsplit

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from cqrs.connection import redact_url

__all__ = ["EXIT_FAILURE", "EXIT_OK", "EXIT_USAGE", "Output"]

EXIT_OK = 0
"""The command did what it was asked and found nothing wrong."""
EXIT_FAILURE = 1
"""Something was found wrong (damage, a copy that does not verify) or an operation failed
(a database error, a conflict)."""
EXIT_USAGE = 2
"""The command line was wrong: an unknown option, a missing or unsupported URL."""

_USER_PART = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:/@\s]*):[^@\s]*@")
_SECRET_KEYS = {"password", "pwd", "passwd", "secret", "token", "sslpassword"}


def _secrets(url: str) -> set[str]:
    try:
        parts = urlsplit(url)
    except ValueError:
        return set()
    found = set()
    if parts.password:
        found |= {parts.password, unquote(parts.password)}
    found |= {
        value for key, value in parse_qsl(parts.query) if key.lower() in _SECRET_KEYS and value
    }
    return {secret for secret in found if secret}


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        if speed is None and task.finished_time:  # the rate up to the end, not up to now
            speed = task.completed / task.finished_time
        return Text("-" if speed is None else f"{speed:,.0f} events/s", style="progress.data.speed")


class _ScrubFilter(logging.Filter):
    def __init__(self, output: Output) -> None:
        super().__init__()
        self.output = output

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.output.scrub(record.getMessage())
        record.args = None
        return True


class Output:
    """Where a command writes: ``json`` selects machine-readable output on stdout."""

    def __init__(self, *, json_output: bool = False, urls: Iterable[str] = ()) -> None:
        self.json = json_output
        self.secrets: set[str] = set()
        for url in urls:
            self.add_url(url)
        self.console = Console(highlight=False, soft_wrap=True)
        self.errors = Console(stderr=True, highlight=False, soft_wrap=True)

    def add_url(self, url: str | None) -> None:
        """Remember the secrets in ``url`` so that no output shows them."""
        if url:
            self.secrets |= _secrets(url)

    def scrub(self, text: str) -> str:
        """``text`` without passwords: those of the known URLs, and any in a URL's user
        part."""
        text = _USER_PART.sub(r"\g<scheme>\g<user>:***@", text)
        for secret in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(secret, "***")
        return text

    def url(self, url: str) -> str:
        """A URL as it may be shown."""
        return self.scrub(redact_url(url))

    def print(self, text: str = "") -> None:
        """A line of text on stdout (Rich markup is not interpreted)."""
        self.console.print(self.scrub(text), markup=False)

    def print_renderable(self, renderable: object) -> None:
        """A Rich renderable (a table) on stdout, scrubbed line by line."""
        with self.console.capture() as capture:
            self.console.print(renderable)
        for line in capture.get().splitlines():
            self.console.print(self.scrub(line), markup=False)

    def emit_json(self, data: object) -> None:
        """One JSON document on one line of stdout."""
        # The console soft-wraps: a long document stays on one line.
        self.console.print(
            self.scrub(json.dumps(data, default=str, ensure_ascii=False)), markup=False
        )

    def error(self, text: str) -> None:
        """An error line on stderr."""
        self.errors.print(self.scrub(f"cqrs: error: {text}"), markup=False)

    def note(self, text: str) -> None:
        """A remark on stderr (not part of the result)."""
        self.errors.print(self.scrub(text), markup=False)

    @contextmanager
    def progress(self) -> Iterator[Progress]:
        """A Rich progress display on stderr: bar, count, rate, elapsed time and ETA."""
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            MofNCompleteColumn(),
            _RateColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=self.errors, transient=False) as progress:
            yield progress

    @contextmanager
    def logging(self) -> Iterator[None]:
        """While inside, warnings of the ``cqrs`` loggers go to stderr, scrubbed."""
        logger = logging.getLogger("cqrs")
        handler = logging.StreamHandler()
        handler.setLevel(logging.WARNING)
        handler.addFilter(_ScrubFilter(self))
        handler.setFormatter(logging.Formatter("cqrs: %(name)s: %(levelname)s: %(message)s"))
        logger.addHandler(handler)
        try:
            yield
        finally:
            logger.removeHandler(handler)
