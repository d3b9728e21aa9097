"""The JSONL backend's files: deer-flow's layout, crash-safe appends, recovery on load.

Layout under a base directory (deer-flow's, so a `.deer-flow` directory opens as it is):
`threads/{thread_id}/runs/{run_id}.jsonl`, one record a line, plus `threads/{thread_id}/runs/.seq`,
the thread's seq counter, written when a delete could otherwise let a seq be reused.
Every function here blocks; the store calls them from a worker thread.

Nothing below the base directory is followed if it is a symbolic link (`threads`, a thread's
directory, its `runs`, a run file): ids are safe names, so without links every path stays inside
the base, and a link planted there cannot make a read, write or delete reach anywhere else.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import uuid
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError

from runevents.errors import RunEventsError
from runevents.events import Record, RunEventRecord, derived_event_id, record_from_model

logger = logging.getLogger("runevents.store.jsonl")

_SAFE_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")
_COUNTER = ".seq"
_DELETING = ".deleting-"


def unsafe_id_problem(value: str) -> str | None:
    """Why an id cannot be a path component here, or None if it can."""
    if _SAFE_ID.fullmatch(value):
        return None
    return (
        f"{value!r} is not a safe file name for the JSONL backend "
        "(letters, digits, '_', '-' and '.', not starting with '.')"
    )


class UnsafePathError(RunEventsError, OSError):
    """A path under the JSONL base directory is a symbolic link, which the backend never follows."""


@dataclass(frozen=True, slots=True)
class ThreadFiles:
    """Where one thread's files live."""

    base: Path
    thread_id: str

    @property
    def runs(self) -> Path:
        """The directory of the thread's run files."""
        return self.base / "threads" / self.thread_id / "runs"

    @property
    def counter(self) -> Path:
        """The file that keeps the thread's last assigned seq across deletes."""
        return self.runs / _COUNTER

    @property
    def retention(self) -> Path:
        """The file of the thread's own retention policy, beside its runs."""
        return self.base / "threads" / self.thread_id / "retention.json"

    def run_file(self, run_id: str) -> Path:
        """The file of one run."""
        return self.runs / f"{run_id}.jsonl"

    def refuse_links(self, *files: Path) -> None:
        """Raise `UnsafePathError` if the thread's directories, or any of `files`, is a symbolic link."""
        threads = self.base / "threads"
        for path in (threads, threads / self.thread_id, self.runs, *files):
            refuse_link(path)


def refuse_link(path: Path) -> None:
    """Raise `UnsafePathError` if `path` is a symbolic link."""
    if path.is_symlink():
        raise UnsafePathError(
            f"{path} is a symbolic link; the JSONL backend follows none under its base directory"
        )


@dataclass(slots=True)
class LoadedThread:
    """What a thread's files hold, in seq order, and what was repaired on the way."""

    records: list[Record] = field(default_factory=list)
    counter: int = 0
    # run_id -> files of other runs that hold records of this run (deer-flow once wrote a whole
    # batch into its first event's run file); deleting the run must rewrite them too.
    strays: dict[str, set[Path]] = field(default_factory=dict)


def _durable(fd: int, fsync: bool) -> None:
    if fsync:
        os.fsync(fd)


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _repair_torn_tail(path: Path, data: bytes) -> bytes:
    # Only newline-terminated lines were ever acknowledged (an append writes line and newline in
    # one call and returns after it); anything after the last newline is an append that a crash
    # cut short. Truncating it keeps the next append from being glued onto the fragment.
    keep = data.rfind(b"\n") + 1
    with open(path, "r+b") as file:
        file.truncate(keep)
    logger.warning(
        "%s: dropped a torn last line of %d bytes (an append that did not finish)", path, len(data) - keep
    )
    return data[:keep]


def _decode_line(line: bytes, thread_id: str, run_id: str) -> Record:
    raw: Any = orjson.loads(line)
    if not isinstance(raw, dict):
        raise ValueError(f"a record is a JSON object, got {type(raw).__name__}")
    if raw.get("thread_id") != thread_id:
        raise ValueError(f"record of thread {raw.get('thread_id')!r} in the directory of {thread_id!r}")
    if "event_id" not in raw:
        # deer-flow's records have no event id; derive one that is the same at every load.
        raw["event_id"] = derived_event_id(thread_id, raw.get("run_id", run_id), raw.get("seq", 0))
    return record_from_model(RunEventRecord.model_validate(raw))


def _read_run_file(path: Path, thread_id: str, loaded: LoadedThread) -> None:
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        data = _repair_torn_tail(path, data)
    file_run = path.name.removesuffix(".jsonl")
    bad = 0
    for number, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            record = _decode_line(line, thread_id, file_run)
        except (orjson.JSONDecodeError, ValidationError, ValueError) as exc:
            bad += 1
            if bad == 1:
                logger.warning("%s:%d: skipped an unreadable record: %s", path, number, exc)
            continue
        if record["run_id"] != file_run:
            loaded.strays.setdefault(record["run_id"], set()).add(path)
        loaded.records.append(record)
    if bad > 1:
        logger.warning("%s: skipped %d unreadable records in all", path, bad)


def load_thread(files: ThreadFiles) -> LoadedThread:
    """Read every record of a thread, repairing a torn last line in any of its files."""
    loaded = LoadedThread()
    files.refuse_links()
    if not files.runs.is_dir():
        return loaded
    run_files = sorted(files.runs.glob("*.jsonl"))
    files.refuse_links(*run_files, files.counter)
    for path in run_files:
        _read_run_file(path, files.thread_id, loaded)
    # Stable: records sharing a seq (deer-flow reuses one after its newest run is deleted) keep
    # their file order.
    loaded.records.sort(key=lambda record: record["seq"])
    seqs = [record["seq"] for record in loaded.records]
    repeated = len(seqs) - len(set(seqs))
    if repeated:
        logger.warning(
            "thread %s: %d records share a seq with an earlier one (written by a store that reused seqs);"
            " they are kept in file order",
            files.thread_id,
            repeated,
        )
    if files.counter.is_file():
        loaded.counter = int(files.counter.read_text(encoding="ascii").strip() or 0)
    return loaded


def append_lines(appends: Mapping[Path, list[bytes]], fsync: bool) -> None:
    """Append lines to files, all or none: a failure truncates every touched file back."""
    written: list[tuple[int, int]] = []
    try:
        for path, lines in appends.items():
            # runs/, the thread's directory and threads/ (a cached thread was checked only when loaded).
            for directory in path.parents[:3]:
                refuse_link(directory)
            created = not path.exists()
            if created:
                path.parent.mkdir(parents=True, exist_ok=True)
            try:
                # O_NOFOLLOW: a run file that is a link fails here instead of writing through it.
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            except OSError:
                refuse_link(path)
                raise
            written.append((fd, os.fstat(fd).st_size))
            payload = memoryview(b"".join(line + b"\n" for line in lines))
            while payload:
                payload = payload[os.write(fd, payload) :]
            _durable(fd, fsync)
            if created and fsync:
                _sync_dir(path.parent)
    except BaseException:
        for fd, size in written:
            os.ftruncate(fd, size)
        raise
    finally:
        for fd, _ in written:
            os.close(fd)


def write_counter(files: ThreadFiles, last_seq: int, fsync: bool) -> None:
    """Persist the thread's last assigned seq, atomically (write aside, then rename)."""
    files.refuse_links()
    files.runs.mkdir(parents=True, exist_ok=True)
    aside = files.runs / f"{_COUNTER}.{uuid.uuid4().hex}.tmp"
    with open(aside, "w", encoding="ascii") as file:
        file.write(f"{last_seq}\n")
        file.flush()
        _durable(file.fileno(), fsync)
    os.replace(aside, files.counter)
    if fsync:
        _sync_dir(files.runs)


def _run_of(line: bytes) -> Any:
    try:
        raw = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return raw.get("run_id") if isinstance(raw, dict) else None


def remove_run(files: ThreadFiles, run_id: str, strays: Iterable[Path], fsync: bool) -> None:
    """Delete a run's file and its records held in other runs' files."""
    files.refuse_links(files.run_file(run_id), *strays)
    for path in strays:
        kept = [line for line in path.read_bytes().split(b"\n") if _run_of(line) != run_id]
        aside = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
        with open(aside, "wb") as file:
            file.write(b"\n".join(kept))
            file.flush()
            _durable(file.fileno(), fsync)
        os.replace(aside, path)
    files.run_file(run_id).unlink(missing_ok=True)
    if fsync:
        _sync_dir(files.runs)


def remove_seqs(files: ThreadFiles, paths: Iterable[Path], seqs: Collection[int], fsync: bool) -> None:
    """Rewrite each of `paths` without its records at `seqs`: replaced whole, or removed if left empty."""
    gone = set(seqs)
    paths = list(paths)
    files.refuse_links(*paths)
    for path in paths:
        if not path.exists():
            continue
        lines = [line for line in path.read_bytes().split(b"\n") if line.strip()]
        kept = [line for line in lines if _seq_of(line) not in gone]
        if len(kept) == len(lines):
            continue
        if not kept:
            path.unlink()
            continue
        aside = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
        with open(aside, "wb") as file:
            file.write(b"\n".join(kept) + b"\n")
            file.flush()
            _durable(file.fileno(), fsync)
        os.replace(aside, path)
    if fsync:
        _sync_dir(files.runs)


def _seq_of(line: bytes) -> Any:
    try:
        return orjson.loads(line).get("seq")
    except (orjson.JSONDecodeError, AttributeError):
        return None


def write_retention(files: ThreadFiles, policy: dict[str, Any] | None, fsync: bool) -> None:
    """Keep the thread's own retention policy (a JSON document) beside its runs; None removes it."""
    path = files.retention
    files.refuse_links(path)
    if policy is None:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    aside = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
    with open(aside, "wb") as file:
        file.write(orjson.dumps(policy))
        file.flush()
        _durable(file.fileno(), fsync)
    os.replace(aside, path)
    if fsync:
        _sync_dir(path.parent)


def read_retention(files: ThreadFiles) -> dict[str, Any] | None:
    """The thread's own retention policy document, if it has one."""
    path = files.retention
    files.refuse_links(path)
    try:
        policy: dict[str, Any] = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    return policy


def thread_ids(base: Path) -> list[str]:
    """The ids of the threads with a directory under `base`, sorted."""
    threads = base / "threads"
    if not threads.is_dir():
        return []
    return sorted(entry.name for entry in threads.iterdir() if entry.is_dir() and not entry.is_symlink())


def remove_thread(files: ThreadFiles) -> None:
    """Delete every run file and the counter of a thread, atomically: rename the directory, then remove it."""
    files.refuse_links()
    if not files.runs.is_dir():
        return
    doomed = files.runs.with_name(f"{_DELETING}{uuid.uuid4().hex}")
    os.replace(files.runs, doomed)
    shutil.rmtree(doomed)
    remove_deleted_leftovers(files)


def remove_deleted_leftovers(files: ThreadFiles) -> None:
    """Finish deletes a crash interrupted (renamed run directories not yet removed)."""
    thread_dir = files.runs.parent
    if not thread_dir.is_dir():
        return
    for leftover in thread_dir.glob(f"{_DELETING}*"):
        shutil.rmtree(leftover, ignore_errors=True)
    with contextlib.suppress(OSError):
        thread_dir.rmdir()  # only if empty: deer-flow keeps a thread's other data beside runs/
