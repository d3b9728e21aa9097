"""Blobs in PostgreSQL: the `blobs` table beside the read tables, for the sql and bus backends."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncEngine

from runevents.lifecycle.blobs import BlobMissingError, BlobRef, BlobStore
from runevents.names import check_identifier
from runevents.tables.schema import blobs


class PostgresBlobStore(BlobStore):
    """Blobs as rows of the `blobs` table (bytea), in the engine's database: in `schema`, else in the
    schema of the engine's read tables.

    On the bus, give a schema no projection lives in (as `blobs=table` in a kafka:// URL does: public):
    the topic's records point at the blobs, and a replay into a new schema, a promotion or a dropped
    projection must not take them away.
    """

    def __init__(self, engine: AsyncEngine, *, schema: str | None = None) -> None:
        if schema is not None:
            # The same pool, its statements' `blobs` read as `<schema>.blobs`.
            engine = engine.execution_options(schema_translate_map={None: check_identifier("schema", schema)})
        self._engine = engine

    async def _put(self, ref: BlobRef, data: bytes) -> None:
        statement = postgresql.insert(blobs).values(
            sha256=ref.sha256, size=ref.size, media_type=ref.media_type, data=data
        )
        async with self._engine.begin() as connection:
            # Put again for a new event: as young as that event to the retention job's collection.
            await connection.execute(
                statement.on_conflict_do_update(
                    index_elements=[blobs.c.sha256], set_={"created_at": func.now()}
                )
            )

    async def _get(self, sha256: str) -> bytes:
        async with self._engine.connect() as connection:
            found = (await connection.execute(select(blobs.c.data).where(blobs.c.sha256 == sha256))).first()
        if found is None:
            raise BlobMissingError(f"no blob {sha256} in the blobs table")
        return bytes(found[0])

    async def _delete(self, sha256: str) -> bool:
        async with self._engine.begin() as connection:
            removed = await connection.execute(delete(blobs).where(blobs.c.sha256 == sha256))
        return bool(removed.rowcount)

    async def _collect(self, sha256: str, written_before: datetime) -> bool:
        # One statement: a put again between a look at its age and the delete cannot be lost.
        statement = delete(blobs).where(blobs.c.sha256 == sha256, blobs.c.created_at < written_before)
        async with self._engine.begin() as connection:
            removed = await connection.execute(statement)
        return bool(removed.rowcount)

    async def _addresses(self, after: str | None, limit: int) -> list[str]:
        statement = select(blobs.c.sha256).order_by(blobs.c.sha256).limit(limit)
        if after is not None:
            statement = statement.where(blobs.c.sha256 > after)
        async with self._engine.connect() as connection:
            return [sha256 for (sha256,) in await connection.execute(statement)]
