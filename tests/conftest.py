"""Our backends under the shipped conformance suite, loaded the way a third party does.

``cqrs_conformance.plugin`` provides ``backend``, ``repository`` and ``sync_backend`` (also
used by tests outside tests/conformance) from ``cqrs_backend_factory``, parametrized here
over our backends' factories in tests/backends_under_test. Listing a backend id in
``CQRS_TEST_REQUIRE`` (comma-separated) turns the skip of an unreachable server into a
failure.
"""

from __future__ import annotations

import pytest
from backends_under_test import BACKEND_IDS, load_factory

from cqrs_conformance import BackendFactory

pytest_plugins = ["cqrs_conformance.plugin"]

SERVICES = {"nats"}
"""Servers that are not backends but may be required too (tests/test_nats*.py: the NATS
server at CQRS_TEST_NATS_URL and the nats-server binary the fault tests start)."""


def pytest_configure(config: pytest.Config) -> None:
    # Imported here, after pytest has loaded (and assert-rewritten) the plugin.
    from cqrs_conformance.plugin import required  # noqa: PLC0415

    unknown = required() - set(BACKEND_IDS) - SERVICES
    if unknown:
        msg = f"CQRS_TEST_REQUIRE names unknown backends: {sorted(unknown)}"
        raise pytest.UsageError(msg)


@pytest.fixture(params=BACKEND_IDS)
def cqrs_backend_factory(request: pytest.FixtureRequest) -> BackendFactory:
    backend_id: str = request.param
    factory = load_factory(backend_id)
    if factory is None:
        from cqrs_conformance.plugin import unusable  # noqa: PLC0415  (as above)

        unusable(backend_id, "its backend is not built yet")
        raise AssertionError  # unreachable: unusable raises
    return factory
