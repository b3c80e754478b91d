"""The pytest plugin of the conformance suite: the fixtures its tests use, built from one.

Load it in the top-level ``conftest.py`` (``pytest_plugins = ["cqrs_conformance.plugin"]``)
or with ``-p cqrs_conformance.plugin``, and provide the fixture ``cqrs_backend_factory``,
which returns a ``BackendFactory`` (parametrize it to run the suite on several backends;
its ids become the tests' ``[memory]``, ``[sqlite]``...). The plugin then provides:

- ``backend``: a ``Backend`` over the factory, for the test's own tables;
- ``repository``: an open repository on it, with its schema created;
- ``sync_backend``: a ``Backend`` for synchronous tests that run their own event loop.

A factory that reports itself unavailable (a server down) skips its tests with the reason;
naming its id in ``CQRS_TEST_REQUIRE`` (comma-separated) turns that skip into a failure.
Tests marked ``stress`` are deselected unless ``CQRS_TEST_STRESS=1`` or ``-m`` is given.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cqrs import PersistedEventRepository
from cqrs_conformance.factory import CAPABILITIES, BackendFactory

# The suite is imported from site-packages, not collected: rewrite its asserts all the same.
pytest.register_assert_rewrite("cqrs_conformance.suite", "cqrs_conformance.support")


def required() -> set[str]:
    """The backend ids that must not be skipped (``CQRS_TEST_REQUIRE``)."""
    return {name.strip() for name in os.environ.get("CQRS_TEST_REQUIRE", "").split(",") if name}


def unusable(backend_id: str, reason: str) -> None:
    """Skip the test for this reason, or fail it if the backend is required."""
    if backend_id in required():
        pytest.fail(f"{backend_id} is required (CQRS_TEST_REQUIRE) but {reason}")
    pytest.skip(f"{backend_id}: {reason}")


def pytest_configure(config: pytest.Config) -> None:
    """Register the suite's marker; check that pytest-asyncio runs its plain async tests."""
    if config.getini("asyncio_mode") != "auto":
        msg = (
            "the cqrs conformance suite needs pytest-asyncio in auto mode: set "
            "asyncio_mode = auto in the pytest configuration (or pass -o asyncio_mode=auto)"
        )
        raise pytest.UsageError(msg)
    config.addinivalue_line(
        "markers",
        "stress: long stress and fault runs; deselected unless CQRS_TEST_STRESS=1 or -m "
        "selects them",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect stress tests unless CQRS_TEST_STRESS=1 or ``-m`` chooses markers itself."""
    if os.environ.get("CQRS_TEST_STRESS") == "1" or config.getoption("markexpr"):
        return
    keep = [item for item in items if item.get_closest_marker("stress") is None]
    if len(keep) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in keep])
        items[:] = keep


@dataclass
class Backend:
    """One backend under test, with helpers to make more repositories on it."""

    factory: BackendFactory
    workdir: Path
    prefix: str
    opened: list[PersistedEventRepository] = field(default_factory=list)

    @property
    def id(self) -> str:
        """The factory's id."""
        return self.factory.id

    def name(self, suffix: str) -> str:
        """A table/collection name private to this test."""
        return f"{self.prefix}_{suffix}"

    def has(self, capability: str) -> bool:
        """Whether the backend has this capability (one of ``CAPABILITIES``)."""
        assert capability in CAPABILITIES, capability  # noqa: S101  (a typo in a test)
        return capability in self.factory.capabilities

    def requires(self, capability: str) -> None:
        """Skip the test unless the backend has this capability."""
        if not self.has(capability):
            pytest.skip(f"needs capability {capability!r}: {CAPABILITIES[capability]}")

    def new_repository(
        self, events: str = "events", snapshots: str = "snapshots", *, page_size: int | None = None
    ) -> PersistedEventRepository:
        """An unopened repository over this test's tables (closed after the test); each is a
        separate client (its own connections) on the same data."""
        repository = self.factory.repository(
            self.workdir, self.name(events), self.name(snapshots), page_size
        )
        self.opened.append(repository)
        return repository

    async def open_repository(
        self, events: str = "events", snapshots: str = "snapshots", *, page_size: int | None = None
    ) -> PersistedEventRepository:
        """Like ``new_repository``, opened and with its schema created."""
        repository = self.new_repository(events, snapshots, page_size=page_size)
        await repository.open()
        await repository.create_schema()
        return repository


@pytest.fixture
def cqrs_backend_factory() -> BackendFactory:
    """The backend under test: override this fixture in your conftest.py."""
    pytest.fail(
        "the conformance suite needs a `cqrs_backend_factory` fixture returning the "
        "backend's factory (see cqrs_conformance.BackendFactory)"
    )


@pytest.fixture
async def backend(cqrs_backend_factory: BackendFactory, tmp_path: Path) -> AsyncIterator[Backend]:
    """The backend under test, for this test's tables (dropped after it)."""
    factory = cqrs_backend_factory
    reason = await factory.unavailable()
    if reason is not None:
        unusable(factory.id, reason)
    prefix = f"t{uuid.uuid4().hex[:12]}"
    state = Backend(factory, tmp_path, prefix)
    try:
        yield state
    finally:
        for repository in state.opened:
            await repository.close()
        await factory.cleanup(tmp_path, prefix)


@pytest.fixture
async def repository(backend: Backend) -> PersistedEventRepository:
    """An open repository with its schema created, on the backend under test."""
    return await backend.open_repository()


@pytest.fixture
def sync_backend(cqrs_backend_factory: BackendFactory, tmp_path: Path) -> Iterator[Backend]:
    """Like ``backend``, for synchronous tests that run their own event loop (Hypothesis
    state machines): open and close repositories inside that loop."""
    factory = cqrs_backend_factory
    reason = asyncio.run(factory.unavailable())
    if reason is not None:
        unusable(factory.id, reason)
    prefix = f"t{uuid.uuid4().hex[:12]}"
    yield Backend(factory, tmp_path, prefix)
    asyncio.run(factory.cleanup(tmp_path, prefix))
