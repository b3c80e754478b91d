"""Shared fixtures: the backend-parametrized ``repository`` and friends.

A backend whose server is unreachable is skipped with a one-line reason; listing it in
``CQRS_TEST_REQUIRE`` (comma-separated ids) turns that skip into a failure.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from backends_under_test import BACKEND_IDS, CAPABILITIES, BackendFactory, load_factory

from cqrs import PersistedEventRepository

REQUIRED = {name.strip() for name in os.environ.get("CQRS_TEST_REQUIRE", "").split(",") if name}


def pytest_configure(config: pytest.Config) -> None:
    unknown = REQUIRED - set(BACKEND_IDS)
    if unknown:
        msg = f"CQRS_TEST_REQUIRE names unknown backends: {sorted(unknown)}"
        raise pytest.UsageError(msg)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect stress tests unless CQRS_TEST_STRESS=1 or ``-m`` chooses markers itself."""
    if os.environ.get("CQRS_TEST_STRESS") == "1" or config.getoption("markexpr"):
        return
    keep = [item for item in items if item.get_closest_marker("stress") is None]
    if len(keep) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in keep])
        items[:] = keep


def _unusable(backend_id: str, reason: str) -> None:
    if backend_id in REQUIRED:
        pytest.fail(f"{backend_id} is required (CQRS_TEST_REQUIRE) but {reason}")
    pytest.skip(f"{backend_id}: {reason}")


@dataclass
class Backend:
    """One backend under test, with helpers to make more repositories on it."""

    factory: BackendFactory
    workdir: Path
    prefix: str
    opened: list[PersistedEventRepository] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.factory.id

    def name(self, suffix: str) -> str:
        """A table/collection name private to this test."""
        return f"{self.prefix}_{suffix}"

    def has(self, capability: str) -> bool:
        assert capability in CAPABILITIES, capability
        return capability in self.factory.capabilities

    def requires(self, capability: str) -> None:
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
        repository = self.new_repository(events, snapshots, page_size=page_size)
        await repository.open()
        await repository.create_schema()
        return repository


def _factory(backend_id: str) -> BackendFactory:
    factory = load_factory(backend_id)
    if factory is None:
        _unusable(backend_id, "its backend is not built yet")
        raise AssertionError  # unreachable: _unusable raises
    return factory


@pytest.fixture(params=BACKEND_IDS)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    backend_id: str = request.param
    factory = _factory(backend_id)
    reason = await factory.unavailable()
    if reason is not None:
        _unusable(backend_id, reason)
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
    """An open repository with its schema created, on each backend in turn."""
    return await backend.open_repository()


@pytest.fixture(params=BACKEND_IDS)
def sync_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Like ``backend``, for synchronous tests that run their own event loop (Hypothesis
    state machines): open and close repositories inside that loop."""
    backend_id: str = request.param
    factory = _factory(backend_id)
    reason = asyncio.run(factory.unavailable())
    if reason is not None:
        _unusable(backend_id, reason)
    prefix = f"t{uuid.uuid4().hex[:12]}"
    yield Backend(factory, tmp_path, prefix)
    asyncio.run(factory.cleanup(tmp_path, prefix))
