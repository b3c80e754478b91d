"""Factories named after cqrs-es: a CqrsFramework over a MongoDB repository in one call.

They are the core's (:mod:`cqrs.factories`) under this backend's names, with the same
parameters on every backend. Pass an open :class:`~cqrs_mongodb.MongoEventRepository`
whose schema exists.
"""

from __future__ import annotations

from cqrs.factories import aggregate_cqrs, event_store_cqrs, snapshot_cqrs

__all__ = ["mongodb_aggregate_cqrs", "mongodb_cqrs", "mongodb_snapshot_cqrs"]

mongodb_cqrs = event_store_cqrs
mongodb_snapshot_cqrs = snapshot_cqrs
mongodb_aggregate_cqrs = aggregate_cqrs
