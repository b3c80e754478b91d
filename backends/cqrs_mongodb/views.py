"""The MongoDB view repository: one document per view, ``{_id: view id, version, payload}``,
with the payload stored as the codec's JSON text."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

from bson.errors import BSONError
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError, OperationFailure, PyMongoError

from cqrs.codec import Codec, default_codec
from cqrs.repository import BaseViewRepository
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


class MongoViewRepository(BaseViewRepository[V]):
    """Views of type ``view_type`` in one collection, one document per view:
    ``{_id: view id, version, payload}`` with the payload stored as the codec's JSON text.

    ``source`` is a ``MongoEventRepository`` (the views share its client and work while it
    is open: every method raises :class:`cqrs.NotOpenError` before any I/O otherwise), a
    ``pymongo.AsyncMongoClient`` (database ``database``, else the client's default, else
    ``"cqrs"``) or an ``AsyncDatabase``.
    """

    table_kind = "collection"

    def __init__(
        self,
        view_type: type[V],
        table: str,
        source: MongoEventRepository | AsyncMongoClient[Any] | AsyncDatabase[Any],
        *,
        database: str | None = None,
        codec: Codec = default_codec,
    ) -> None:
        super().__init__(view_type, table, codec=codec)
        self._holder: _HasDatabase | None = None
        self._database: AsyncDatabase[Document] | None = None
        if isinstance(getattr(type(source), "database", None), property):
            self._holder = cast("_HasDatabase", source)  # a MongoEventRepository
        else:
            self._database = resolve_database(source, database)

    def _collection(self) -> AsyncCollection[Document]:
        database = self._database if self._holder is None else self._holder.database
        assert database is not None  # noqa: S101 - one of the two is always set
        return database.get_collection(self.table)

    def _check_open(self) -> None:
        self._collection()

    async def _create_schema(self) -> None:
        collection = self._collection()
        try:
            await collection.database.create_collection(self.table, check_exists=False)
        except OperationFailure as error:
            if error.code != _NAMESPACE_EXISTS:
                raise translate(error, f"creating {self.table}") from error
        except (PyMongoError, BSONError) as error:
            raise translate(error, f"creating {self.table}") from error

    async def _fetch(self, view_id: str) -> tuple[Any, Any] | None:
        try:
            document = await self._collection().find_one({"_id": view_id})
        except (PyMongoError, BSONError) as error:
            raise translate(error, f"loading view {view_id!r} from {self.table}") from error
        return None if document is None else (document.get("payload"), document.get("version"))

    async def _store(self, view_id: str, payload: bytes, version: int, expected: int) -> bool:
        collection, text = self._collection(), payload.decode()
        try:
            if expected == 0:
                await collection.insert_one({"_id": view_id, "version": version, "payload": text})
                return True
            result = await collection.update_one(
                {"_id": view_id, "version": expected},
                {"$set": {"version": version, "payload": text}},
            )
        except DuplicateKeyError:
            return False
        except (PyMongoError, BSONError) as error:
            doing = f"storing view {view_id!r} version {version} in {self.table}"
            raise translate(error, doing) from error
        return result.matched_count == 1
