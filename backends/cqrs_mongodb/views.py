"""The MongoDB view repository: one document per view, ``{_id: view id, version, payload}``,
with the payload stored as the codec's JSON text."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, cast

from bson.errors import BSONError
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import OperationFailure, PyMongoError

from cqrs.codec import Codec, default_codec
from cqrs.errors import AggregateConflict, DeserializationError
from cqrs.repository import ViewContext, next_view_version, validate_identifier
from cqrs_mongodb._driver import Document, resolve_database, translate

if TYPE_CHECKING:
    from pymongo import AsyncMongoClient

    from cqrs_mongodb.repository import MongoEventRepository

__all__ = ["MongoViewRepository"]

V = TypeVar("V")

_NAMESPACE_EXISTS = 48


class _HasDatabase(Protocol):
    @property
    def database(self) -> AsyncDatabase[Document]: ...


class MongoViewRepository(Generic[V]):
    """Views of type ``view_type`` in one collection, with optimistic locking by version.

    ``source`` is a ``MongoEventRepository`` (the views share its client and work while it
    is open: every method raises :class:`cqrs.NotOpenError` before any I/O otherwise), a
    ``pymongo.AsyncMongoClient`` (database ``database``, else the client's default, else
    ``"cqrs"``) or an ``AsyncDatabase``. Views are (de)serialized with
    ``codec``; a stored view that does not decode raises DeserializationError naming it.
    """

    def __init__(
        self,
        source: MongoEventRepository | AsyncMongoClient[Any] | AsyncDatabase[Any],
        view_type: type[V],
        collection: str = "views",
        *,
        database: str | None = None,
        codec: Codec = default_codec,
    ) -> None:
        self.view_type = view_type
        self.collection = validate_identifier(collection, "collection name")
        self.codec = codec
        self._holder: _HasDatabase | None = None
        self._database: AsyncDatabase[Document] | None = None
        if isinstance(getattr(type(source), "database", None), property):
            self._holder = cast("_HasDatabase", source)  # a MongoEventRepository
        else:
            self._database = resolve_database(source, database)

    def _collection(self) -> AsyncCollection[Document]:
        database = self._database if self._holder is None else self._holder.database
        assert database is not None  # noqa: S101 - one of the two is always set
        return database.get_collection(self.collection)

    async def create_schema(self) -> None:
        """Create the collection (idempotent, safe when run concurrently)."""
        collection = self._collection()
        try:
            await collection.database.create_collection(self.collection, check_exists=False)
        except OperationFailure as error:
            if error.code != _NAMESPACE_EXISTS:
                raise translate(error, f"creating {self.collection}") from error
        except (PyMongoError, BSONError) as error:
            raise translate(error, f"creating {self.collection}") from error

    async def load(self, view_id: str) -> V | None:
        """The view, or None."""
        loaded = await self.load_with_context(view_id)
        return None if loaded is None else loaded[0]

    async def load_with_context(self, view_id: str) -> tuple[V, ViewContext] | None:
        """The view and its version, or None."""
        collection = self._collection()
        try:
            document = await collection.find_one({"_id": view_id})
        except (PyMongoError, BSONError) as error:
            raise translate(error, f"loading view {view_id!r} from {self.collection}") from error
        if document is None:
            return None
        try:
            view = self.codec.decode(document["payload"], self.view_type)
            version: int = document["version"]
        except (ValueError, TypeError, KeyError) as error:
            msg = f"view {view_id!r} in {self.collection} does not decode: {error}"
            raise DeserializationError(msg) from error
        return view, ViewContext(view_id, version)

    async def update_view(self, view: V, context: ViewContext, version: int | None = None) -> None:
        """Store the view at ``version`` (default ``context.version + 1``) if its stored
        version still equals ``context.version`` (0: none stored yet); raise
        AggregateConflict otherwise."""
        new_version = next_view_version(context, version)
        collection = self._collection()
        payload = self.codec.encode(view).decode()
        view_id, old_version = context.view_id, context.version
        doing = f"storing view {view_id!r} version {new_version} in {self.collection}"
        try:
            if old_version == 0:
                await collection.insert_one(
                    {"_id": view_id, "version": new_version, "payload": payload}
                )
                return
            result = await collection.update_one(
                {"_id": view_id, "version": old_version},
                {"$set": {"version": new_version, "payload": payload}},
            )
        except (PyMongoError, BSONError) as error:
            raise translate(error, doing) from error
        if result.matched_count == 0:
            msg = f"view {view_id!r} in {self.collection} is no longer at version {old_version}"
            raise AggregateConflict(msg)
