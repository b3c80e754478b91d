"""What a backend provides to run the conformance suite: a factory, and the capabilities.

The factory makes repositories on the backend under test, each over tables (collections)
named by the test; the suite never names a backend and asks for capabilities instead.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Protocol

from cqrs import PersistedEventRepository

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
    """The one object a backend gives the suite (the ``cqrs_backend_factory`` fixture).

    - ``id``: a short name, used in test ids (``[memory]``) and ``CQRS_TEST_REQUIRE``;
    - ``capabilities``: the names from ``CAPABILITIES`` the backend has (the tests of the
      others skip);
    - ``unavailable()``: None when usable, else a one-line reason to skip (a server down);
    - ``repository(workdir, events_table, snapshots_table, page_size)``: a new, unopened
      repository over those tables, a separate client each time (its own connections) on
      the same data as the test's other repositories; ``workdir`` is the test's own
      temporary directory (for files); ``page_size``: rows per page of the ``stream_*``
      methods, the backend's default for None;
    - ``cleanup(workdir, prefix)``: drop every table/collection whose name starts with
      ``prefix`` (the test named everything it created with it).

    A factory with the ``multiprocess`` capability is also rebuilt in other processes: it
    must be a module-level object of an importable module (see ``reference``). It may have
    ``stress_scale`` (a float, default 1.0) to scale down the stress tests on a slow server.
    """

    id: str
    capabilities: frozenset[str]

    async def unavailable(self) -> str | None:
        """None when the backend is usable, else why not (one line)."""
        ...

    def repository(
        self, workdir: Path, events_table: str, snapshots_table: str, page_size: int | None = None
    ) -> PersistedEventRepository:
        """A new, unopened repository over these tables."""
        ...

    async def cleanup(self, workdir: Path, prefix: str) -> None:
        """Drop what the test created (names starting with ``prefix``)."""
        ...


def reference(factory: BackendFactory) -> str | None:
    """``module:name`` under which another process finds this factory object, or None."""
    module = type(factory).__module__
    for name, value in vars(sys.modules[module]).items():
        if value is factory:
            return f"{module}:{name}"
    return None


def load(spec: str) -> BackendFactory:
    """The factory named by ``reference`` (in another process)."""
    module, _, name = spec.partition(":")
    factory: BackendFactory = getattr(importlib.import_module(module), name)
    return factory
