"""`runevents retention apply`: expire what a policy no longer keeps, thread by thread, in bounded steps.

Each thread's events are read as summaries (seq, run, category, time), the policy picks the seqs it no
longer keeps, and they go in steps of at most `step` seqs, each step a transaction of its own (on the
bus, an expire record the projector applies), so no step holds a thread's counter row for long and a
writer of the thread waits at most one step. Killed at any point, nothing is half-done: a step either
happened or not, and a run again finds what is left.

With a blob store, a run that looked at every thread then removes the blobs no event points at any
more (after deletes and expiry), unless written or put again within `blob_grace` before the run began:
a blob is written before its event, and a writer may be between the two.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from runevents.bus.read_your_writes import ProjectionTimeout
from runevents.lifecycle.blobs import BlobStore
from runevents.lifecycle.retention import RetentionPolicy, expired_seqs
from runevents.metrics import RETENTION_BLOBS_COLLECTED, RETENTION_EXPIRED, RETENTION_OLDEST_AGE
from runevents.store import RunEventStore

log = logging.getLogger(__name__)

DEFAULT_STEP: Final = 1000
THREADS_PAGE: Final = 500
BLOBS_PAGE: Final = 1000
# Longer than any writer spends between writing a blob and its event (a put's wait included).
DEFAULT_BLOB_GRACE: Final = timedelta(hours=1)


@dataclass
class RetentionReport:
    """What a retention run did so far."""

    threads: int = 0
    threads_expired: int = 0
    expired: int = 0
    steps: int = 0
    seconds: float = 0.0
    stopped: bool = False
    blobs_collected: int = 0
    # The projection was behind the topic: which blobs are referenced could not be known this run.
    blobs_skipped: bool = False
    # The oldest event left in a thread whose policy expires events (None: no such event).
    oldest_kept: datetime | None = None

    def line(self) -> str:
        """One line saying it, for a log or the terminal."""
        rate = self.expired / self.seconds if self.seconds > 0 else 0.0
        how = "stopped after" if self.stopped else "done:"
        line = (
            f"retention {how} {self.threads:,} threads looked at, {self.expired:,} events expired from "
            f"{self.threads_expired:,} of them in {self.steps:,} steps, {self.seconds:.1f} s "
            f"({rate:,.0f} events/s)"
        )
        if self.blobs_collected:
            line += f", {self.blobs_collected:,} unreferenced blobs removed"
        if self.blobs_skipped:
            line += ", no blobs collected (the projection was behind the topic)"
        if self.oldest_kept is not None:
            line += f"; oldest event kept under a limiting policy: {self.oldest_kept.isoformat()}"
        return line


async def apply_retention(
    store: RunEventStore,
    policy: RetentionPolicy,
    *,
    now: datetime | None = None,
    step: int = DEFAULT_STEP,
    dry_run: bool = False,
    stop: asyncio.Event | None = None,
    progress: Callable[[RetentionReport], None] | None = None,
    blob_grace: timedelta = DEFAULT_BLOB_GRACE,
) -> RetentionReport:
    """Expire from every thread of `store` what its policy no longer keeps at `now` (default: this moment):
    the thread's own (`set_retention`), else `policy`; then, if the store keeps whole contents in a blob
    store, remove the blobs no event points at that are older than `blob_grace`.

    `dry_run` counts what would go (unreferenced blobs of any age) and removes nothing. A set `stop`
    ends the run between two steps (`stopped` says so). `progress` is called with the report after each
    thread that lost events.
    """
    if not 1 <= step <= 10_000:
        raise ValueError(f"step must be from 1 to 10000 seqs, got {step}")
    moment = datetime.now(UTC) if now is None else now
    began = datetime.now(UTC)
    blobs = store.blobs
    report = RetentionReport()
    started = time.monotonic()
    after: str | None = None
    # The blobs the threads looked at point at: what the collection after the walk keeps.
    referenced: set[str] = set()
    if blobs is not None:
        # On the bus, an event published (its blob written) but not yet projected would be missed by
        # the walk: the walk starts once the projection has everything published before the run.
        try:
            await store.caught_up()
        except ProjectionTimeout as exc:
            log.warning("not collecting blobs this run: %s", exc)
            report.blobs_skipped = True
    try:
        while True:
            page = await store.list_thread_ids(after=after, limit=THREADS_PAGE)
            if not page:
                break
            for thread_id in page:
                if stop is not None and stop.is_set():
                    report.stopped = True
                    return report
                report.threads += 1
                expired = await _expire_thread(store, thread_id, policy, moment, step, dry_run, stop, report)
                if expired:
                    report.threads_expired += 1
                    if progress is not None:
                        report.seconds = time.monotonic() - started
                        progress(report)
                if report.stopped:
                    return report
                if blobs is not None and not report.blobs_skipped:
                    referenced |= await store.blob_references(thread_id)
            after = page[-1]
        if report.oldest_kept is not None:
            RETENTION_OLDEST_AGE.set((moment - report.oldest_kept).total_seconds())
        if blobs is not None and not report.blobs_skipped:
            await _collect_blobs(blobs, referenced, report, began - blob_grace, dry_run, stop)
        return report
    finally:
        report.seconds = time.monotonic() - started


async def _collect_blobs(
    blobs: BlobStore,
    referenced: set[str],
    report: RetentionReport,
    cutoff: datetime,
    dry_run: bool,
    stop: asyncio.Event | None,
) -> None:
    """Remove the blobs written before `cutoff` but those `referenced`."""
    after: str | None = None
    while page := await blobs.addresses(after=after, limit=BLOBS_PAGE):
        for address in page:
            if stop is not None and stop.is_set():
                report.stopped = True
                return
            if address in referenced:
                continue
            if dry_run or await blobs.collect(address, written_before=cutoff):
                report.blobs_collected += 1
                if not dry_run:
                    RETENTION_BLOBS_COLLECTED.inc()
        after = page[-1]


async def _expire_thread(
    store: RunEventStore,
    thread_id: str,
    policy: RetentionPolicy,
    now: datetime,
    step: int,
    dry_run: bool,
    stop: asyncio.Event | None,
    report: RetentionReport,
) -> int:
    """Expire one thread's events its policy (its own, else `policy`) no longer keeps, `step` seqs at a
    time; how many went."""
    policy = await store.get_retention(thread_id) or policy
    if policy.keeps_everything:
        return 0
    summaries = await store.retention_summaries(thread_id)
    seqs = expired_seqs(summaries, policy, now)
    gone = set(seqs)
    oldest = min((summary.created_at for summary in summaries if summary.seq not in gone), default=None)
    if oldest is not None and (report.oldest_kept is None or oldest < report.oldest_kept):
        report.oldest_kept = oldest
    if dry_run:
        report.expired += len(seqs)
        return len(seqs)
    removed = 0
    for start in range(0, len(seqs), step):
        if stop is not None and stop.is_set():
            report.stopped = True
            break
        went = await store.expire_events(thread_id, seqs[start : start + step])
        removed += went
        report.expired += went
        report.steps += 1
        RETENTION_EXPIRED.inc(went)
    return removed
