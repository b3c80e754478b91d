"""Our backends' factories for the conformance suite (``cqrs_conformance``).

Each backend lives in ``tests/backends_under_test/<id>.py`` and defines ``FACTORY``, a
``cqrs_conformance.BackendFactory`` (its docstring is the protocol). tests/conftest.py
parametrizes the suite's ``cqrs_backend_factory`` fixture over them.

Tests never name a backend: they ask for a capability with ``requires(...)``.
"""

from __future__ import annotations

import importlib

from cqrs_conformance import BackendFactory

__all__ = ["BACKEND_IDS", "BackendFactory", "load_factory"]

BACKEND_IDS = ("memory", "sqlite", "postgres", "mongodb", "mysql")


def load_factory(backend_id: str) -> BackendFactory | None:
    """The backend's factory, or None when its test module does not exist yet."""
    try:
        module = importlib.import_module(f"backends_under_test.{backend_id}")
    except ModuleNotFoundError as error:
        if error.name == f"backends_under_test.{backend_id}":
            return None
        raise
    return module.FACTORY
