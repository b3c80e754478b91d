"""Backend factories for the conformance suite.

Each backend lives in ``tests/backends/<id>.py`` and defines ``FACTORY``, an object with:

- ``id``: the backend id (``memory``, ``sqlite``, ``postgres``, ``mongodb``);
- ``capabilities``: a frozenset of capability names (see ``CAPABILITIES``);
- ``async unavailable() -> str | None``: None when usable, else a one-line skip reason;
- ``repository(workdir, events_table, snapshots_table, page_size=None)``: a new, unopened
  repository (``page_size``: rows per page of the ``stream_*`` methods, the backend's
  default for None);
- ``async cleanup(workdir, prefix)``: drop every table/collection whose name starts with
  ``prefix`` (tests name everything they create with their prefix).

Tests never name a backend: they ask for a capability with ``requires(...)``.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Protocol

from cqrs import PersistedEventRepository

BACKEND_IDS = ("memory", "sqlite", "postgres", "mongodb")

CAPABILITIES = {
    "persistent": "data survives closing and reopening the repository",
    "multiprocess": "several OS processes can share the store",
    "push": "a commit wakes the same repository's subscriptions at once (pushed, not polled)",
    "push_across_clients": (
        "a commit by another client (repository, connection, process) wakes subscriptions "
        "within a second, whatever their poll interval"
    ),
}


class BackendFactory(Protocol):
    id: str
    capabilities: frozenset[str]

    async def unavailable(self) -> str | None: ...

    def repository(
        self, workdir: Path, events_table: str, snapshots_table: str, page_size: int | None = None
    ) -> PersistedEventRepository: ...

    async def cleanup(self, workdir: Path, prefix: str) -> None: ...


def load_factory(backend_id: str) -> BackendFactory | None:
    """The backend's factory, or None when its test module does not exist yet."""
    try:
        module = importlib.import_module(f"backends_under_test.{backend_id}")
    except ModuleNotFoundError as error:
        if error.name == f"backends_under_test.{backend_id}":
            return None
        raise
    return module.FACTORY
