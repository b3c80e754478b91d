from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlsplit

from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError

from cqrs_mongodb import MongoEventRepository

DATABASE = "cqrs_test"


def database_url() -> str | None:
    """CQRS_TEST_MONGODB_URL with its path replaced by the test database."""
    url = os.environ.get("CQRS_TEST_MONGODB_URL")
    if not url:
        return None
    return urlsplit(url)._replace(path=f"/{DATABASE}").geturl()


class MongoFactory:
    id = "mongodb"
    capabilities = frozenset({"persistent", "multiprocess", "push", "push_across_clients"})
    # The CI server, SecantusDB, answers ~1k operations/s on this machine's 2 cores (a hot
    # run at full size spends ~90 s in reads); stress runs check the same rules on a
    # quarter of the load.
    stress_scale = 0.25

    def __init__(self) -> None:
        self._reachable: bool | None = None

    async def unavailable(self) -> str | None:
        url = database_url()
        if url is None:
            return "CQRS_TEST_MONGODB_URL is not set"
        if self._reachable:
            return None
        client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(
            url, serverSelectionTimeoutMS=3000
        )
        try:
            await client.admin.command("ping")
        except PyMongoError as error:
            return f"no MongoDB server answers at {url}: {type(error).__name__}"
        finally:
            await client.close()
        self._reachable = True
        return None

    def repository(
        self, workdir: Path, events_table: str, snapshots_table: str, page_size: int | None = None
    ) -> MongoEventRepository:
        url = database_url()
        assert url is not None
        paging = {} if page_size is None else {"page_size": page_size}
        return MongoEventRepository(
            url, events_collection=events_table, snapshots_collection=snapshots_table, **paging
        )

    async def cleanup(self, workdir: Path, prefix: str) -> None:
        url = database_url()
        assert url is not None
        client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(url)
        try:
            database = client[DATABASE]
            for name in await database.list_collection_names():
                if name.startswith(prefix):
                    await database.drop_collection(name)
            # counter documents are keyed by their events collection's name
            await database["counters"].delete_many({"_id": {"$regex": f"^{re.escape(prefix)}"}})
        finally:
            await client.close()


FACTORY = MongoFactory()
