"""MongoDB backend on PyMongo's native async client (``pymongo.AsyncMongoClient``).

Events are committed in multi-document transactions, so the server must be a replica set
(a single node is enough) or a sharded cluster; a standalone server is refused at open.
"""

from cqrs_mongodb.checkpoints import MongoCheckpointStore
from cqrs_mongodb.factories import mongodb_aggregate_cqrs, mongodb_cqrs, mongodb_snapshot_cqrs
from cqrs_mongodb.repository import MongoEventRepository, from_url
from cqrs_mongodb.views import MongoViewRepository

__all__ = [
    "MongoCheckpointStore",
    "MongoEventRepository",
    "MongoViewRepository",
    "from_url",
    "mongodb_aggregate_cqrs",
    "mongodb_cqrs",
    "mongodb_snapshot_cqrs",
]
