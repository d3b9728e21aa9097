"""Erasure's contract on every backend (issue 21): a user's threads found, and `erase=True` either done
(a backend that keeps no other copy: it is the delete) or refused before anything is deleted (a bus
store that does not seal; tests/bus/test_encryption.py covers one that does)."""

from __future__ import annotations

import pytest

from runevents.errors import ErasureUnavailableError, InvalidQueryError
from runevents.store import RunEventStore
from tests.backends.registry import Backend
from tests.conformance.builders import message, trace


async def test_a_user_s_threads_are_the_ones_holding_an_event_of_theirs(store: RunEventStore) -> None:
    await store.put_batch(
        [
            message("t1", user_id="alice"),
            message("t2", user_id="bob"),
            trace("t3", user_id="alice"),
            message("t4"),
            message("t2", "r2", user_id="alice"),
        ]
    )
    assert await store.user_thread_ids("alice") == ["t1", "t2", "t3"]
    assert await store.user_thread_ids("bob") == ["t2"]
    assert await store.user_thread_ids("nobody") == []
    with pytest.raises(InvalidQueryError, match="user_id"):
        await store.user_thread_ids("")


async def test_erase_is_the_delete_where_no_other_copy_is_kept_and_refused_where_one_is(
    store: RunEventStore, backend: Backend
) -> None:
    await store.put_batch([message("t1", user_id="alice"), message("t1", user_id="alice"), message("t2")])
    if backend.name in ("bus",):
        # Its topic keeps the thread's records in the clear: nothing is deleted.
        with pytest.raises(ErasureUnavailableError, match="does not seal its records"):
            await store.delete_by_thread("t1", erase=True)
        assert len(await store.list_messages("t1")) == 2
        return
    assert await store.delete_by_thread("t1", erase=True) == 2
    assert await store.list_messages("t1") == []
    assert await store.user_thread_ids("alice") == []
    assert len(await store.list_messages("t2")) == 1
