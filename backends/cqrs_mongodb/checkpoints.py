"""The MongoDB checkpoint store: one document per projection, ``{_id: name, position,
owner, token, lease_until}``, and one per parked event in ``<collection>_parked``."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from bson.errors import BSONError
from pymongo import ASCENDING, ReturnDocument
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import OperationFailure, PyMongoError

from cqrs.checkpoints import Lease, ParkedEvent, check_lease_name, lease_lost
from cqrs.repository import SerializedEvent, validate_identifier
from cqrs_mongodb._driver import Document, translate

if TYPE_CHECKING:
    from cqrs_mongodb.repository import MongoEventRepository

__all__ = ["MongoCheckpointStore"]

_DUPLICATE_KEY = 11000
_NAMESPACE_EXISTS = 48


class MongoCheckpointStore:
    """A :class:`~cqrs.checkpoints.CheckpointStore` in the collections ``collection`` and
    ``<collection>_parked`` of the database of ``repository``, on its client: every method
    raises NotOpenError while that repository is not open.

    Acquire, renew, release, save and reset are each one atomic single-document update
    (``find_one_and_update`` or ``update_one`` filtered by name and token), so concurrent
    runners in any processes get exactly one winner per lease and a save under a token
    that moved on changes nothing. A park checks the token and stores the record in one
    transaction. Leases expire on the wall clock (``clock``, default ``time.time``) of the
    runners' machines, which must agree to well within a lease's ttl.
    """

    def __init__(
        self,
        collection: str,
        repository: MongoEventRepository,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.table = validate_identifier(collection, "collection name")
        self.parked_table = validate_identifier(f"{collection}_parked", "collection name")
        self.repository = repository
        self._clock = clock

    def _leases(self) -> AsyncCollection[Document]:
        return self.repository.database.get_collection(self.table)

    def _parked(self) -> AsyncCollection[Document]:
        return self.repository.database.get_collection(self.parked_table)

    async def create_schema(self) -> None:
        """Create both collections and the unique (name, position) index of parked events
        (idempotent, safe when several processes run it at once)."""
        database = self.repository.database
        doing = f"creating the checkpoint collections {self.table}"
        try:
            for name in (self.table, self.parked_table):
                try:
                    await database.create_collection(name, check_exists=False)
                except OperationFailure as error:
                    if error.code != _NAMESPACE_EXISTS:
                        raise
            await self._parked().create_index(
                [("name", ASCENDING), ("position", ASCENDING)], unique=True, name="position"
            )
        except (PyMongoError, BSONError) as error:
            raise translate(error, doing) from error

    async def acquire(self, name: str, owner: str, ttl: float) -> Lease | None:
        """Take the lease if free, expired or already ``owner``'s (a new token each time)."""
        check_lease_name(name)
        check_lease_name(owner, "owner")
        leases = self._leases()
        now = self._clock()
        takeable = {"$or": [{"owner": ""}, {"owner": owner}, {"lease_until": {"$lte": now}}]}
        update = {
            "$set": {"owner": owner, "lease_until": now + ttl},
            "$inc": {"token": 1},
            "$setOnInsert": {"position": 0},
        }
        try:
            document = await leases.find_one_and_update(
                {"_id": name, **takeable},
                update,
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
        except OperationFailure as error:
            if error.code == _DUPLICATE_KEY:
                return None  # the document exists and is not takeable: the upsert collided
            raise translate(error, f"acquiring the lease of {name!r}") from error
        except (PyMongoError, BSONError) as error:
            raise translate(error, f"acquiring the lease of {name!r}") from error
        if document is None:  # an upsert always returns the document it wrote
            return None
        return Lease(name, owner, document["token"], document["position"])

    async def renew(self, lease: Lease, ttl: float) -> bool:
        """Extend the lease if its token is current and it was not released."""
        query = {"_id": lease.name, "token": lease.token, "owner": {"$ne": ""}}
        update = {"$set": {"lease_until": self._clock() + ttl}}
        return await self._update(query, update, f"renewing the lease of {lease.name!r}") == 1

    async def release(self, lease: Lease) -> None:
        """End the lease if its token is current."""
        query = {"_id": lease.name, "token": lease.token}
        update = {"$set": {"owner": "", "lease_until": 0.0}}
        await self._update(query, update, f"releasing the lease of {lease.name!r}")

    async def save(self, lease: Lease, position: int) -> None:
        """Store the checkpoint under a current token; raise LeaseLost otherwise."""
        query = {"_id": lease.name, "token": lease.token}
        update = {"$max": {"position": position}}
        if await self._update(query, update, f"saving the checkpoint of {lease.name!r}") != 1:
            raise lease_lost(lease, await self._token(lease.name))

    async def position(self, name: str) -> int:
        """The checkpoint (0 if never saved)."""
        check_lease_name(name)
        document = await self._find(name, f"reading the checkpoint of {name!r}")
        return 0 if document is None else int(document["position"])

    async def reset(self, name: str, position: int = 0) -> None:
        """Set the checkpoint and end the lease; the token moves on, fencing its holder."""
        check_lease_name(name)
        update = {
            "$set": {"position": position, "owner": "", "lease_until": 0.0},
            "$inc": {"token": 1},
        }
        doing = f"resetting {name!r}"
        try:
            await self._leases().update_one({"_id": name}, update, upsert=True)
        except OperationFailure as error:
            if error.code != _DUPLICATE_KEY:
                raise translate(error, doing) from error
            # Two upserts created the document at once: this one now updates it.
            await self._update({"_id": name}, update, doing)
        except (PyMongoError, BSONError) as error:
            raise translate(error, doing) from error

    async def park(self, lease: Lease, event: SerializedEvent, error: str) -> None:
        """Set the event aside under a current token (replacing one of its position)."""
        leases, parked = self._leases(), self._parked()
        record = {"event_id": str(event.event_id), "error": error, "parked_at": datetime.now(UTC)}
        key = {"name": lease.name, "position": event.position}

        async def attempt(session: AsyncClientSession) -> bool:
            # The counter write makes a concurrent takeover conflict with this transaction.
            held = await leases.update_one(
                {"_id": lease.name, "token": lease.token},
                {"$inc": {"parked": 1}},
                session=session,
            )
            if held.matched_count != 1:
                return False
            await parked.update_one(key, {"$set": record}, upsert=True, session=session)
            return True

        doing = f"parking position {event.position} of {lease.name!r}"
        try:
            async with leases.database.client.start_session() as session:
                stored = await session.with_transaction(attempt)
        except (PyMongoError, BSONError) as failure:
            raise translate(failure, doing) from failure
        if not stored:
            raise lease_lost(lease, await self._token(lease.name))

    async def parked(self, name: str) -> list[ParkedEvent]:
        """The parked events of ``name``, by position."""
        check_lease_name(name)
        try:
            cursor = self._parked().find({"name": name}).sort("position", ASCENDING)
            documents = await cursor.to_list()
        except (PyMongoError, BSONError) as error:
            raise translate(error, f"reading the parked events of {name!r}") from error
        return [ParkedEvent(name, d["position"], d["event_id"], d["error"]) for d in documents]

    async def _find(self, name: str, doing: str) -> Document | None:
        try:
            document: Document | None = await self._leases().find_one({"_id": name})
        except (PyMongoError, BSONError) as error:
            raise translate(error, doing) from error
        return document

    async def _token(self, name: str) -> int | None:
        document = await self._find(name, f"reading the lease of {name!r}")
        return None if document is None else int(document["token"])

    async def _update(self, query: Document, update: dict[str, Any], doing: str) -> int:
        try:
            result = await self._leases().update_one(query, update)
        except (PyMongoError, BSONError) as error:
            raise translate(error, doing) from error
        return result.matched_count
