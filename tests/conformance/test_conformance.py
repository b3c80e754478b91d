"""The shipped conformance suite on our backends, pulled in as a third-party backend does
(tests/conftest.py loads the plugin and provides ``cqrs_backend_factory``)."""

from cqrs_conformance.suite import *  # noqa: F403
