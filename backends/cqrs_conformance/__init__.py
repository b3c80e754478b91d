"""The conformance suite every backend passes, shipped for third-party backends.

A backend runs it with two files in its tests (see README, "Writing a backend"):

- ``conftest.py``: ``pytest_plugins = ["cqrs_conformance.plugin"]`` and a fixture
  ``cqrs_backend_factory`` returning its ``BackendFactory`` (parametrize it for several);
- ``test_conformance.py``: ``from cqrs_conformance.suite import *``.

``cqrs_conformance.bank_account`` is the sample domain the suite (and the example app) uses.
Importing this package does not import pytest; the plugin and the suite do.
"""

from cqrs_conformance.factory import CAPABILITIES, BackendFactory

__all__ = ["CAPABILITIES", "BackendFactory"]
