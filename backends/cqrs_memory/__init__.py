"""In-memory backend: the same repository protocol as every other backend, in one process.

It has real optimistic concurrency and global positions, so it passes the whole
conformance suite; it keeps nothing after the process ends.
"""

from cqrs_memory.checkpoints import MemoryCheckpointStore
from cqrs_memory.factories import memory_aggregate_cqrs, memory_cqrs, memory_snapshot_cqrs
from cqrs_memory.repository import (
    MemoryDatabase,
    MemoryEventRepository,
    MemoryViewRepository,
    from_url,
)

__all__ = [
    "MemoryCheckpointStore",
    "MemoryDatabase",
    "MemoryEventRepository",
    "MemoryViewRepository",
    "from_url",
    "memory_aggregate_cqrs",
    "memory_cqrs",
    "memory_snapshot_cqrs",
]
