"""``cqrs.connect(url)``: pick and open a backend from a URL."""

from __future__ import annotations

import importlib
from collections.abc import Generator
from types import TracebackType
from typing import Protocol, cast

from cqrs.errors import ConfigurationError
from cqrs.repository import PersistedEventRepository

__all__ = ["BACKENDS", "connect"]

BACKENDS: dict[str, tuple[str, str]] = {
    "memory": ("cqrs_memory", ""),
    "sqlite": ("cqrs_sqlite", "sqlite"),
    "postgresql": ("cqrs_postgres", "postgres"),
    "postgres": ("cqrs_postgres", "postgres"),
    "mongodb": ("cqrs_mongodb", "mongodb"),
    "mongodb+srv": ("cqrs_mongodb", "mongodb"),
}
"""URL scheme -> (backend module, extra that installs its driver)."""


class _BackendModule(Protocol):
    def from_url(self, url: str) -> PersistedEventRepository: ...


class _Connect:
    """Awaitable and async context manager returned by :func:`connect`."""

    def __init__(self, url: str, *, create_schema: bool) -> None:
        self._url = url
        self._create_schema = create_schema
        self._repository: PersistedEventRepository | None = None

    async def _open(self) -> PersistedEventRepository:
        repository = _backend_for(self._url).from_url(self._url)
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
        return f"connect({self._url!r})"


def connect(url: str, *, create_schema: bool = True) -> _Connect:
    """Open the event repository named by ``url``; use as ``async with`` or ``await``.

    Schemes: ``memory://``, ``sqlite:///path.db`` (``sqlite://:memory:`` too),
    ``postgresql://...`` and ``mongodb://...``. The backend's driver is imported only when
    its scheme is used. With ``create_schema`` (the default) the tables/collections are
    created if missing. Raises ConfigurationError for an unknown scheme or a missing
    driver (naming the extra to install), and the backend's DatabaseConnectionError when the
    server cannot be reached. ``async with`` closes the repository on exit; after a bare
    ``await`` the caller closes it.
    """
    _resolve(url)
    return _Connect(url, create_schema=create_schema)


def _resolve(url: str) -> tuple[str, str, str]:
    scheme, sep, _ = url.partition("://")
    entry = BACKENDS.get(scheme.lower()) if sep else None
    if entry is None:
        known = ", ".join(f"{name}://" for name in BACKENDS)
        msg = f"unsupported database URL {url!r}: the scheme must be one of {known}"
        raise ConfigurationError(msg)
    return scheme, *entry


def _backend_for(url: str) -> _BackendModule:
    scheme, module_name, extra = _resolve(url)
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        hint = f"pip install 'cqrs-es[{extra}]'" if extra else "reinstall cqrs-es"
        msg = f"the {scheme}:// backend is not available ({error}); install it with: {hint}"
        raise ConfigurationError(msg) from error
    return cast("_BackendModule", module)
