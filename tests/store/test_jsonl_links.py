"""The JSONL backend never follows a symbolic link under its base directory, and refuses `/` as one."""

from __future__ import annotations

import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from runevents.store import JsonlRunEventStore
from runevents.store.jsonl_files import UnsafePathError

Use = Callable[[JsonlRunEventStore], Awaitable[Any]]

MESSAGE: dict[str, Any] = {
    "thread_id": "t1",
    "run_id": "r1",
    "event_type": "llm.human.input",
    "category": "message",
}

USES: list[Any] = [
    pytest.param(lambda store: store.list_messages("t1"), id="read"),
    pytest.param(lambda store: store.put(**MESSAGE, content="planted"), id="write"),
    pytest.param(lambda store: store.delete_by_run("t1", "r1"), id="delete-run"),
    pytest.param(lambda store: store.delete_by_thread("t1"), id="delete-thread"),
]


def outside_thread(tmp_path: Path) -> Path:
    """A thread's directory outside the store, holding a run someone else owns."""
    elsewhere = tmp_path / "elsewhere" / "t1"
    (elsewhere / "runs").mkdir(parents=True)
    (elsewhere / "runs" / "r1.jsonl").write_text(
        '{"thread_id":"t1","run_id":"r1","seq":1,"event_type":"x","category":"message","content":"secret",'
        '"metadata":{},"created_at":"2026-01-01T00:00:00+00:00"}\n'
    )
    return elsewhere


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under `directory` and its bytes."""
    return {
        str(path.relative_to(directory)): path.read_bytes() for path in directory.rglob("*") if path.is_file()
    }


@pytest.mark.parametrize("use", USES)
@pytest.mark.parametrize("linked", ["thread", "runs", "threads"])
async def test_a_linked_directory_is_refused(tmp_path: Path, use: Use, linked: str) -> None:
    elsewhere = outside_thread(tmp_path)
    base = tmp_path / "store"
    threads = base / "threads"
    if linked == "threads":
        base.mkdir()
        threads.symlink_to(elsewhere.parent, target_is_directory=True)
    elif linked == "thread":
        threads.mkdir(parents=True)
        (threads / "t1").symlink_to(elsewhere, target_is_directory=True)
    else:
        (threads / "t1").mkdir(parents=True)
        (threads / "t1" / "runs").symlink_to(elsewhere / "runs", target_is_directory=True)
    before = snapshot(elsewhere)
    async with JsonlRunEventStore(base) as store:
        with pytest.raises(UnsafePathError, match="symbolic link"):
            await use(store)
    assert snapshot(elsewhere) == before
    assert (elsewhere / "runs" / "r1.jsonl").exists()


@pytest.mark.parametrize("use", USES)
async def test_a_linked_run_file_is_refused(tmp_path: Path, use: Use) -> None:
    elsewhere = outside_thread(tmp_path)
    runs = tmp_path / "store" / "threads" / "t1" / "runs"
    runs.mkdir(parents=True)
    (runs / "r1.jsonl").symlink_to(elsewhere / "runs" / "r1.jsonl")
    before = snapshot(elsewhere)
    async with JsonlRunEventStore(tmp_path / "store") as store:
        with pytest.raises(UnsafePathError, match="symbolic link"):
            await use(store)
    assert snapshot(elsewhere) == before


async def test_a_link_planted_after_the_thread_was_read_is_refused(tmp_path: Path) -> None:
    elsewhere = outside_thread(tmp_path)
    base = tmp_path / "store"
    async with JsonlRunEventStore(base) as store:
        await store.put(**MESSAGE, content="mine")  # the thread is now cached
        shutil.rmtree(base / "threads" / "t1")
        (base / "threads" / "t1").symlink_to(elsewhere, target_is_directory=True)
        before = snapshot(elsewhere)
        with pytest.raises(UnsafePathError):
            await store.put(**MESSAGE, content="planted")
    assert snapshot(elsewhere) == before


@pytest.mark.parametrize("root", ["/", "/..", "//"])
def test_the_root_is_not_a_base_directory(root: str) -> None:
    with pytest.raises(ValueError, match="root"):
        JsonlRunEventStore(root)
