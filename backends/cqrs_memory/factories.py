"""Factories named after cqrs-es: a CqrsFramework over an in-memory repository in one call.

They are the core's (:mod:`cqrs.factories`) under this backend's names, with the same
parameters on every backend. Pass an open :class:`~cqrs_memory.MemoryEventRepository`.
"""

from __future__ import annotations

from cqrs.factories import aggregate_cqrs, event_store_cqrs, snapshot_cqrs

__all__ = ["memory_aggregate_cqrs", "memory_cqrs", "memory_snapshot_cqrs"]

memory_cqrs = event_store_cqrs
memory_snapshot_cqrs = snapshot_cqrs
memory_aggregate_cqrs = aggregate_cqrs
