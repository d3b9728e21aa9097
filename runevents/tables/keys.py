"""The threads' data keys in PostgreSQL (`thread_keys`), wrapped by the keyring's current KEK.

Writers ask for each thread's live key (made on first use; at most one live key a thread, by a unique
index, so two writers making one at once agree on the first) and keep it for `cache_ttl_s`. That is
the rule for erasure across processes: a writer that cached a key before it was destroyed seals with
it for at most `cache_ttl_s` more (its own process's erasures drop it at once); what it sealed then is
projected as erased, like everything else sealed with that key, and its next key is a new one. The
projector looks up the keys of each batch in the batch's own transaction and caches nothing, so a
destroyed key opens nothing from the next batch on.

The keys live outside every projection's schema (by default `public`): the topic's records name
them, and a replay into a new schema must find them.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any, Final

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import String, any_, bindparam, func, select, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from runevents.crypto.keyring import KeyUnavailableError, KeyWrapper, new_key
from runevents.names import check_identifier
from runevents.tables.schema import thread_keys

DEFAULT_KEY_SCHEMA: Final = "public"
DEFAULT_CACHE_TTL_S: Final = 10.0
# Unwrapped keys a reader keeps (about 1 KiB each); past that it starts again.
OPENED_KEPT: Final = 100_000
_k = thread_keys.c


def _any(values: Collection[str]) -> Any:
    """`= ANY(<one array parameter>)`: a batch's thousands of ids would each be a parameter of an IN, past
    PostgreSQL's 32,767."""
    return any_(bindparam("ids", list(values), type_=postgresql.ARRAY(String)))


# Another writer made a thread's key a moment ago: that key is the thread's, and this one is not kept.
_INSERT_NEW: Final = postgresql.insert(thread_keys).on_conflict_do_nothing(
    index_elements=[_k.thread_id], index_where=_k.destroyed_at.is_(None)
)


class ThreadKeys:
    """Makes, finds, unwraps and destroys the threads' data keys."""

    def __init__(
        self,
        engine: AsyncEngine,
        keyring: KeyWrapper,
        *,
        schema: str = DEFAULT_KEY_SCHEMA,
        cache_ttl_s: float = DEFAULT_CACHE_TTL_S,
    ) -> None:
        # The same pool as the store's, its statements' `thread_keys` read as `<schema>.thread_keys`.
        self._in_schema = {"schema_translate_map": {None: check_identifier("schema", schema)}}
        self._engine = engine.execution_options(**self._in_schema)
        self.keyring = keyring
        self._ttl_s = cache_ttl_s
        self._live: dict[str, tuple[str, AESGCM, float]] = {}
        # Keys unwrapped before, by id with the wrapped bytes they came from: a batch still reads every
        # key's row (a destroyed one has none), but unwraps only what it has not seen.
        self._opened: dict[str, tuple[bytes, AESGCM]] = {}

    async def live(self, thread_ids: Collection[str]) -> dict[str, tuple[str, AESGCM]]:
        """Each thread's live key (made if it has none) as (key id, cipher), for sealing its records."""
        now = time.monotonic()
        found: dict[str, tuple[str, AESGCM]] = {}
        wanted = []
        for thread_id in thread_ids:
            cached = self._live.get(thread_id)
            if cached is not None and now - cached[2] < self._ttl_s:
                found[thread_id] = cached[:2]
            else:
                wanted.append(thread_id)
        if wanted:
            async with self._engine.begin() as connection:
                rows = await self._live_rows(connection, wanted)
                missing = [thread_id for thread_id in wanted if thread_id not in rows]
                if missing:
                    # executemany: SQLAlchemy pages the rows under the driver's parameter limit.
                    await connection.execute(_INSERT_NEW, self._new_keys(missing))
                    rows |= await self._live_rows(connection, missing)
            for thread_id in wanted:
                key_id, kek_id, wrapped = rows[thread_id]
                cipher = AESGCM(self.keyring.unwrap(kek_id, wrapped, thread_id=thread_id, key_id=key_id))
                self._live[thread_id] = (key_id, cipher, now)
                found[thread_id] = (key_id, cipher)
        return found

    async def _live_rows(
        self, connection: AsyncConnection, thread_ids: list[str]
    ) -> dict[str, tuple[str, str, bytes]]:
        result = await connection.execute(
            select(_k.thread_id, _k.key_id, _k.kek_id, _k.wrapped).where(
                _k.thread_id == _any(thread_ids), _k.destroyed_at.is_(None)
            )
        )
        return {thread_id: (key_id, kek_id, wrapped) for thread_id, key_id, kek_id, wrapped in result}

    def _new_keys(self, thread_ids: list[str]) -> list[dict[str, Any]]:
        rows = []
        now = datetime.now(UTC)
        for thread_id in thread_ids:
            key_id = str(uuid.uuid4())
            kek_id, wrapped = self.keyring.wrap(new_key(), thread_id=thread_id, key_id=key_id)
            rows.append(
                {
                    "key_id": key_id,
                    "thread_id": thread_id,
                    "kek_id": kek_id,
                    "wrapped": wrapped,
                    "created_at": now,
                }
            )
        return rows

    async def ciphers(
        self, connection: AsyncConnection, key_ids: Collection[str]
    ) -> dict[str, AESGCM | None]:
        """The ciphers of `key_ids` (None: destroyed), read on `connection`; a key not there is an error."""
        # On the caller's connection (a projector's batch: its schema is the projection's), this one
        # statement reads the keys' schema.
        result = await connection.execute(
            select(_k.key_id, _k.thread_id, _k.kek_id, _k.wrapped).where(_k.key_id == _any(key_ids)),
            execution_options=self._in_schema,
        )
        found: dict[str, AESGCM | None] = {}
        opened = self._opened
        for key_id, thread_id, kek_id, wrapped in result:
            if wrapped is None:
                found[key_id] = None
                opened.pop(key_id, None)
                continue
            known = opened.get(key_id)
            if known is not None and known[0] == wrapped:
                found[key_id] = known[1]
                continue
            cipher = AESGCM(self.keyring.unwrap(kek_id, wrapped, thread_id=thread_id, key_id=key_id))
            if len(opened) >= OPENED_KEPT:
                opened.clear()
            opened[key_id] = (wrapped, cipher)
            found[key_id] = cipher
        missing = sorted(set(key_ids) - found.keys())
        if missing:
            raise KeyUnavailableError(
                f"{len(missing)} data keys the records name are not in thread_keys (e.g. {missing[0]}): "
                "a database other than the writers', or keys removed by hand"
            )
        return found

    async def cipher(self, key_id: str) -> AESGCM | None:
        """The cipher of one data key (None: destroyed), read on a connection of the store's pool."""
        async with self._engine.connect() as connection:
            return (await self.ciphers(connection, [key_id]))[key_id]

    async def destroy(self, thread_ids: Collection[str]) -> int:
        """Destroy every key of the threads (their records can no longer be opened); how many went."""
        for thread_id in thread_ids:
            self._live.pop(thread_id, None)
        async with self._engine.begin() as connection:
            result = await connection.execute(
                update(thread_keys)
                .where(_k.thread_id == _any(thread_ids), _k.destroyed_at.is_(None))
                .values(wrapped=None, destroyed_at=func.now())
            )
        return int(result.rowcount)

    async def rewrap(self, *, batch: int = 500) -> int:
        """Wrap every live key wrapped by another KEK with the current one (after a KEK rotation)."""
        current = self.keyring.current
        done = 0
        while True:
            async with self._engine.begin() as connection:
                rows = (
                    await connection.execute(
                        select(_k.key_id, _k.thread_id, _k.kek_id, _k.wrapped)
                        .where(_k.kek_id != current, _k.wrapped.is_not(None))
                        .limit(batch)
                        .with_for_update(skip_locked=True)
                    )
                ).all()
                for key_id, thread_id, kek_id, wrapped in rows:
                    key = self.keyring.unwrap(kek_id, wrapped, thread_id=thread_id, key_id=key_id)
                    new_kek, rewrapped = self.keyring.wrap(key, thread_id=thread_id, key_id=key_id)
                    await connection.execute(
                        update(thread_keys)
                        .where(_k.key_id == key_id)
                        .values(kek_id=new_kek, wrapped=rewrapped)
                    )
            done += len(rows)
            if len(rows) < batch:
                return done
