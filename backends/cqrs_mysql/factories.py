"""Factories named after cqrs-es: a CqrsFramework over a MySQL repository in one call.

They are the core's (:mod:`cqrs.factories`) under this backend's names, with the same
parameters on every backend. Pass an open :class:`~cqrs_mysql.MysqlEventRepository` whose
schema exists.
"""

from __future__ import annotations

from cqrs.factories import aggregate_cqrs, event_store_cqrs, snapshot_cqrs

__all__ = ["mysql_aggregate_cqrs", "mysql_cqrs", "mysql_snapshot_cqrs"]

mysql_cqrs = event_store_cqrs
mysql_snapshot_cqrs = snapshot_cqrs
mysql_aggregate_cqrs = aggregate_cqrs
