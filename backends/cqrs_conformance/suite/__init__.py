"""Every test of the conformance suite: a backend's test module runs them all with

    from cqrs_conformance.suite import *

(its conftest.py loads ``cqrs_conformance.plugin`` and provides ``cqrs_backend_factory``).
The package exports the tests and fixtures of its modules, nothing else; they meet in the
importing module's namespace, so a name used by two modules is refused here, at import.
"""

from types import ModuleType

from cqrs_conformance.suite import (
    test_bad_input,
    test_checkpoints,
    test_event_rows,
    test_port_rules,
    test_properties,
    test_repository,
    test_runner,
    test_snapshot_loads,
    test_snapshots,
    test_stateful,
    test_store,
    test_store_ids,
    test_stress,
    test_subscription,
    test_view_batches,
    test_wake_ups,
)

_MODULES: tuple[ModuleType, ...] = (
    test_bad_input,
    test_checkpoints,
    test_event_rows,
    test_port_rules,
    test_properties,
    test_repository,
    test_runner,
    test_snapshot_loads,
    test_snapshots,
    test_stateful,
    test_store,
    test_store_ids,
    test_stress,
    test_subscription,
    test_view_batches,
    test_wake_ups,
)


def _is_collected(name: str, value: object) -> bool:
    if name.startswith("test_") and callable(value):
        return True
    if name.startswith("Test") and isinstance(value, type):
        return True
    # pytest's fixture wrapper: _fixture_function_marker from 8.4, _pytestfixturefunction before
    return hasattr(value, "_fixture_function_marker") or hasattr(value, "_pytestfixturefunction")


def _collected() -> dict[str, object]:
    found: dict[str, object] = {}
    for module in _MODULES:
        for name, value in vars(module).items():
            if _is_collected(name, value) and found.setdefault(name, value) is not value:
                msg = f"{module.__name__}.{name}: another module of the suite uses that name"
                raise ImportError(msg)
    return found


_TESTS = _collected()
globals().update(_TESTS)
__all__ = sorted(_TESTS)  # noqa: PLE0605  (computed: the tests and fixtures found above)
