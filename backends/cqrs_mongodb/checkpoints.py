"""The MongoDB checkpoint store: one document per projection, ``{_id: name, position,
owner, token, lease_until}``, and one per parked event in ``<collection>_parked``."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from bson.errors import BSONError
from pymongo import ASCENDING, ReturnDocument, UpdateOne
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import OperationFailure, PyMongoError

from cqrs.checkpoints import (
    Lease,
    ParkedEvent,
    ViewWrite,
    check_lease_name,
    lease_lost,
    view_conflict,
)
from cqrs.repository import SerializedEvent, ViewRepository, validate_identifier
from cqrs_mongodb._driver import Document, translate
from cqrs_mongodb.views import MongoViewRepository

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

    It is a :class:`~cqrs.checkpoints.ViewCheckpointStore` for the view repositories of the
    same event repository: a batch is one multi-document transaction (the fenced checkpoint
    update first, so a takeover conflicts with it, then one bulk write for the new views and
    one for the changed ones).
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

    def shares_database(self, views: ViewRepository[Any]) -> bool:
        """True for a view repository made by the same event repository (same client)."""
        return (
            isinstance(views, MongoViewRepository) and views._holder is self.repository  # noqa: SLF001 - same backend
        )

    def _views(self, views: ViewRepository[Any]) -> AsyncCollection[Document]:
        if not isinstance(views, MongoViewRepository) or not self.shares_database(views):
            msg = f"{views!r} is not a view repository of this store's client"
            raise ValueError(msg)
        return self.repository.database.get_collection(views.table)

    async def fetch_views(
        self, views: ViewRepository[Any], view_ids: Sequence[str]
    ) -> dict[str, tuple[object, object]]:
        """The stored views of ``view_ids`` that exist, in one query."""
        collection, ids = self._views(views), list(view_ids)
        try:
            documents = await collection.find({"_id": {"$in": ids}}).to_list()
        except (PyMongoError, BSONError) as error:
            raise translate(error, f"loading {len(ids)} views from {collection.name}") from error
        return {d["_id"]: (d.get("payload"), d.get("version")) for d in documents}

    async def save_with_views(
        self, lease: Lease, position: int, views: ViewRepository[Any], writes: Sequence[ViewWrite]
    ) -> None:
        """Save the checkpoint under the token and store the writes, in one transaction."""
        collection, leases = self._views(views), self._leases()
        new = [w for w in writes if w.expected == 0]
        changed = [w for w in writes if w.expected != 0]
        inserts = [
            UpdateOne(
                {"_id": w.view_id},
                {"$setOnInsert": {"version": w.version, "payload": w.payload.decode()}},
                upsert=True,
            )
            for w in new
        ]
        updates = [
            UpdateOne(
                {"_id": w.view_id, "version": w.expected},
                {"$set": {"version": w.version, "payload": w.payload.decode()}},
            )
            for w in changed
        ]

        async def attempt(session: AsyncClientSession) -> tuple[bool, ViewWrite | None]:
            held = await leases.update_one(
                {"_id": lease.name, "token": lease.token},
                {"$max": {"position": position}},
                session=session,
            )
            if held.matched_count != 1:
                return False, None
            if inserts:
                result = await collection.bulk_write(inserts, ordered=False, session=session)
                if result.upserted_count != len(new):
                    upserted = result.upserted_ids or {}
                    refused = next(w for n, w in enumerate(new) if n not in upserted)
                    await session.abort_transaction()
                    return True, refused
            if updates:
                result = await collection.bulk_write(updates, ordered=False, session=session)
                if result.matched_count != len(changed):
                    refused = await _first_moved(collection, changed, session)
                    await session.abort_transaction()
                    return True, refused
            return True, None

        doing = f"saving {len(writes)} views and the checkpoint of {lease.name!r}"
        try:
            async with leases.database.client.start_session() as session:
                held, refused = await session.with_transaction(attempt)
        except (PyMongoError, BSONError) as failure:
            raise translate(failure, doing) from failure
        if not held:
            raise lease_lost(lease, await self._token(lease.name))
        if refused is not None:
            raise view_conflict(views, refused)

    async def reset_with_views(
        self, name: str, views: Sequence[ViewRepository[Any]], position: int = 0
    ) -> None:
        """Delete the views and reset the checkpoint, in one transaction."""
        check_lease_name(name)
        collections = [self._views(each) for each in views]
        leases = self._leases()
        update = {
            "$set": {"position": position, "owner": "", "lease_until": 0.0},
            "$inc": {"token": 1},
        }

        async def attempt(session: AsyncClientSession) -> None:
            for collection in collections:
                await collection.delete_many({}, session=session)
            await leases.update_one({"_id": name}, update, upsert=True, session=session)

        try:
            async with leases.database.client.start_session() as session:
                await session.with_transaction(attempt)
        except (PyMongoError, BSONError) as error:
            raise translate(error, f"resetting {name!r} and its views") from error

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


async def _first_moved(
    collection: AsyncCollection[Document], writes: list[ViewWrite], session: AsyncClientSession
) -> ViewWrite:
    """The first of ``writes`` whose view is no longer at its expected version."""
    ids = [w.view_id for w in writes]
    cursor = collection.find({"_id": {"$in": ids}}, {"version": 1}, session=session)
    versions = {d["_id"]: d.get("version") for d in await cursor.to_list()}
    return next((w for w in writes if versions.get(w.view_id) != w.version), writes[0])
