"""Factories named after cqrs-es: a CqrsFramework over a SQLite repository in one call.

They are the core's (:mod:`cqrs.factories`) under this backend's names, with the same
parameters on every backend. Pass an open :class:`~cqrs_sqlite.SqliteEventRepository`
whose schema exists.
"""

from __future__ import annotations

from cqrs.factories import aggregate_cqrs, event_store_cqrs, snapshot_cqrs

__all__ = ["sqlite_aggregate_cqrs", "sqlite_cqrs", "sqlite_snapshot_cqrs"]

sqlite_cqrs = event_store_cqrs
sqlite_snapshot_cqrs = snapshot_cqrs
sqlite_aggregate_cqrs = aggregate_cqrs
