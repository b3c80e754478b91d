"""``cqrs.connect(url)``: pick and open a backend from a URL."""

from __future__ import annotations

from collections.abc import Callable, Generator
from importlib.metadata import EntryPoint, entry_points
from types import TracebackType
from typing import cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from cqrs.errors import ConfigurationError
from cqrs.repository import PersistedEventRepository

__all__ = ["ENTRY_POINT_GROUP", "backends", "connect", "redact_url"]

ENTRY_POINT_GROUP = "cqrs.backends"
"""The entry-point group that maps URL schemes to backends.

Each entry is named after a URL scheme and points at a function ``from_url(url)`` that
returns an unopened repository; an extra in brackets names what installs the backend's
driver. cqrs-es registers its own backends this way in its pyproject.toml, e.g.
``postgresql = "cqrs_postgres:from_url [postgres]"``; a third-party package adds its schemes
to the same group."""


_SECRET_PARAMETERS = frozenset({"password", "pwd", "passwd", "secret", "token", "sslpassword"})


def redact_url(url: object) -> str:
    """``url`` as text that is safe to print: a password in the user part
    (``scheme://user:PASSWORD@host``) and the values of query parameters that carry secrets
    (``password``, ``pwd``, ``passwd``, ``secret``, ``token``, ``sslpassword``) become ``***``.

    Everything else is kept as given, so the result still names the server. Any object is
    accepted (its ``str()`` is redacted); text that is not a URL comes back unchanged. Use it
    for every URL that goes into a log line, an error message or a ``repr``.
    """
    text = str(url)
    try:
        parts = urlsplit(text)
    except ValueError:  # e.g. an unbalanced "[" in the host part
        return _redact_user_part(text)
    netloc = parts.netloc
    user, at, host = netloc.rpartition("@")
    if at and ":" in user:
        netloc = f"{user.partition(':')[0]}:***@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(key.lower() in _SECRET_PARAMETERS for key, _ in pairs):
            redacted = [(k, "***" if k.lower() in _SECRET_PARAMETERS else v) for k, v in pairs]
            query = urlencode(redacted, safe="*")
    if netloc == parts.netloc and query == parts.query:
        return text
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _shown(url: object) -> str:
    return repr(redact_url(url)) if isinstance(url, str) else repr(url)


def _redact_user_part(text: str) -> str:
    scheme, sep, rest = text.partition("://")
    user, at, host = rest.rpartition("@")
    if sep and at and ":" in user:
        return f"{scheme}://{user.partition(':')[0]}:***@{host}"
    return text


def backends() -> dict[str, EntryPoint]:
    """The installed backends: URL scheme (lower case) -> its entry point. Nothing is
    imported until a scheme is used."""
    return {entry.name.lower(): entry for entry in entry_points(group=ENTRY_POINT_GROUP)}


class _Connect:
    """Awaitable and async context manager returned by :func:`connect`."""

    def __init__(self, url: str, *, create_schema: bool) -> None:
        self._url = url
        self._create_schema = create_schema
        self._repository: PersistedEventRepository | None = None

    async def _open(self) -> PersistedEventRepository:
        repository = _from_url(self._url)(self._url)
        await repository.open()
        try:
            if self._create_schema:
                await repository.create_schema()
        except BaseException:
            await repository.close()
            raise
        self._repository = repository
        return repository

    def __await__(self) -> Generator[object, None, PersistedEventRepository]:
        return self._open().__await__()

    async def __aenter__(self) -> PersistedEventRepository:
        return await self._open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._repository is not None:
            await self._repository.close()

    def __repr__(self) -> str:
        return f"connect({redact_url(self._url)!r})"


def connect(url: str, *, create_schema: bool = True) -> _Connect:
    """Open the event repository named by ``url``; use as ``async with`` or ``await``.

    Schemes: ``memory://``, ``sqlite:///path.db`` (``sqlite://:memory:`` too),
    ``postgresql://...`` and ``mongodb://...``, plus any scheme a third-party backend
    registers in the :data:`ENTRY_POINT_GROUP` entry-point group. The backend's driver is
    imported only when its scheme is used. With ``create_schema`` (the default) the
    tables/collections are created if missing. Raises ConfigurationError for an unknown
    scheme or a missing driver (naming the extra to install), and the backend's
    DatabaseConnectionError when the server cannot be reached. ``async with`` closes the
    repository on exit; after a bare ``await`` the caller closes it.
    """
    _resolve(url)
    return _Connect(url, create_schema=create_schema)


def _resolve(url: str) -> tuple[str, EntryPoint]:
    scheme, sep, _ = url.partition("://") if isinstance(url, str) else ("", "", "")
    installed = backends()
    entry = installed.get(scheme.lower()) if sep else None
    if entry is None:
        known = ", ".join(f"{name}://" for name in sorted(installed))
        msg = f"unsupported database URL {_shown(url)}: the scheme must be one of {known}"
        raise ConfigurationError(msg)
    return scheme, entry


def _from_url(url: str) -> Callable[[str], PersistedEventRepository]:
    scheme, entry = _resolve(url)
    try:
        factory = entry.load()
    except ImportError as error:
        extra = ",".join(entry.extras)
        hint = f"pip install 'cqrs-es[{extra}]'" if extra else f"reinstall {entry.value!r}"
        msg = f"the {scheme}:// backend is not available ({error}); install it with: {hint}"
        raise ConfigurationError(msg) from error
    if not callable(factory):
        msg = f"the {scheme}:// backend's entry point {entry.value!r} is not callable"
        raise ConfigurationError(msg)
    return cast("Callable[[str], PersistedEventRepository]", factory)
