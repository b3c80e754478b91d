"""Factories named after cqrs-es: a CqrsFramework over a PostgreSQL repository in one call.

They are the core's (:mod:`cqrs.factories`) under this backend's names, with the same
parameters on every backend. Pass an open :class:`~cqrs_postgres.PostgresEventRepository`
whose schema exists.
"""

from __future__ import annotations

from cqrs.factories import aggregate_cqrs, event_store_cqrs, snapshot_cqrs

__all__ = ["postgres_aggregate_cqrs", "postgres_cqrs", "postgres_snapshot_cqrs"]

postgres_cqrs = event_store_cqrs
postgres_snapshot_cqrs = snapshot_cqrs
postgres_aggregate_cqrs = aggregate_cqrs
