"""`runevents retention apply` and the job behind it: bounded steps, dry runs, stops, refusals."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import pytest
from typer.testing import CliRunner

from runevents.bus.projector import Projector
from runevents.bus.store import BusRunEventStore
from runevents.cli.app import app
from runevents.lifecycle.retention import parse_policy
from runevents.ops.retention import RetentionReport, apply_retention
from runevents.store import RunEventStore, open_store
from runevents.store.memory import MemoryRunEventStore
from tests.bus.conftest import running
from tests.ops.test_dead_letters import cli

NOW = datetime(2026, 12, 7, tzinfo=UTC)
OLD = (NOW - timedelta(days=40)).isoformat()
NEW = (NOW - timedelta(days=1)).isoformat()


def _event(thread_id: str, category: str, created_at: str, run_id: str = "r1") -> dict[str, object]:
    return {
        "thread_id": thread_id,
        "run_id": run_id,
        "event_type": "e",
        "category": category,
        "content": "x",
        "created_at": created_at,
    }


async def _history(store: RunEventStore, threads: int = 3, old_traces: int = 25) -> None:
    """Per thread: `old_traces` traces 40 days old, an old message, and a new trace."""
    for number in range(threads):
        thread = f"t{number}"
        await store.put_batch([_event(thread, "trace", OLD) for _ in range(old_traces)])
        await store.put_batch([_event(thread, "message", OLD), _event(thread, "trace", NEW)])


POLICY = parse_policy("max_age=30d; message: forever")


async def test_a_run_expires_what_the_policy_no_longer_keeps_in_bounded_steps() -> None:
    store = MemoryRunEventStore()
    await _history(store)
    seen: list[int] = []
    report = await apply_retention(
        store, POLICY, now=NOW, step=10, progress=lambda report: seen.append(report.expired)
    )
    assert (report.threads, report.threads_expired, report.expired) == (3, 3, 75)
    assert report.steps == 9  # 25 seqs a thread in steps of 10: 3 steps each
    assert seen == [25, 50, 75]
    assert not report.stopped
    for thread in ("t0", "t1", "t2"):
        assert [s.seq for s in await store.retention_summaries(thread)] == [26, 27]
        assert await store.count_messages(thread) == 1
    # Run again, nothing is left to expire.
    again = await apply_retention(store, POLICY, now=NOW)
    assert (again.threads, again.expired) == (3, 0)


async def test_a_dry_run_counts_and_removes_nothing() -> None:
    store = MemoryRunEventStore()
    await _history(store, threads=2)
    report = await apply_retention(store, POLICY, now=NOW, dry_run=True)
    assert (report.expired, report.steps) == (50, 0)
    assert len(await store.retention_summaries("t0")) == 27


async def test_a_stopped_run_leaves_whole_steps_and_a_rerun_finishes_the_job() -> None:
    store = MemoryRunEventStore()
    await _history(store, threads=2)
    stop = asyncio.Event()

    def stop_after_first_thread(report: RetentionReport) -> None:
        stop.set()

    first = await apply_retention(
        store, POLICY, now=NOW, step=10, stop=stop, progress=stop_after_first_thread
    )
    assert first.stopped
    assert first.expired == 25  # the first thread whole, in its 3 steps; the second untouched
    assert len(await store.retention_summaries("t1")) == 27
    second = await apply_retention(store, POLICY, now=NOW, step=10)
    assert second.expired == 25
    assert not second.stopped


async def test_a_thread_s_own_policy_overrides_the_default_one() -> None:
    store = MemoryRunEventStore()
    await _history(store, threads=3)
    await store.set_retention("t1", parse_policy("forever"))
    await store.set_retention("t2", parse_policy("keep_events=1"))
    report = await apply_retention(store, POLICY, now=NOW)
    assert (report.threads, report.threads_expired, report.expired) == (3, 2, 25 + 26)
    assert [len(await store.retention_summaries(t)) for t in ("t0", "t1", "t2")] == [2, 27, 1]
    # Back to the default: nothing more of t1's is kept than the default keeps.
    await store.set_retention("t1", None)
    assert (await apply_retention(store, POLICY, now=NOW)).expired == 25


async def test_a_step_out_of_bounds_is_refused() -> None:
    with pytest.raises(ValueError, match="step must be from 1 to 10000 seqs, got 0"):
        await apply_retention(MemoryRunEventStore(), POLICY, step=0)


def test_the_command_expires_a_jsonl_store_and_says_what_it_did(tmp_path: Path) -> None:
    url = f"jsonl://{tmp_path / 'store'}"

    async def write() -> None:
        async with open_store(url) as store:
            now = datetime.now(UTC)
            await store.put_batch(
                [
                    _event("t1", "trace", (now - timedelta(days=10)).isoformat()),
                    _event("t1", "trace", now.isoformat()),
                    _event("t2", "trace", (now - timedelta(days=10)).isoformat(), run_id="r2"),
                ]
            )

    asyncio.run(write())
    result = CliRunner().invoke(app, ["retention", "apply", "--policy", "trace: max_age=7d", "--store", url])
    assert result.exit_code == 0, result.output
    assert "retention done: 2 threads looked at, 2 events expired from 2 of them in 2 steps" in result.output

    async def read() -> tuple[list[int], list[int]]:
        async with open_store(url) as store:
            return (
                [s.seq for s in await store.retention_summaries("t1")],
                [s.seq for s in await store.retention_summaries("t2")],
            )

    assert asyncio.run(read()) == ([2], [])


def test_the_command_collects_the_blobs_of_a_store_url_s_blob_store(tmp_path: Path) -> None:
    blobs = tmp_path / "blobs"
    url = f"jsonl://{tmp_path / 'store'}?max_trace_content=100&blobs={quote(f'file://{blobs}', safe='')}"
    old = (datetime.now(UTC) - timedelta(days=10)).isoformat()

    async def write() -> None:
        async with open_store(url) as store:
            await store.put_batch(
                [
                    {**_event("t1", "trace", old), "content": "expired " * 50},
                    {**_event("t1", "trace", datetime.now(UTC).isoformat()), "content": "kept " * 50},
                ]
            )

    asyncio.run(write())
    assert len(list(blobs.glob("*/*"))) == 2
    command = ["retention", "apply", "--policy", "trace: max_age=7d", "--store", url]
    within_grace = CliRunner().invoke(app, command)
    assert within_grace.exit_code == 0, within_grace.output
    assert "unreferenced blobs removed" not in within_grace.output
    assert len(list(blobs.glob("*/*"))) == 2
    result = CliRunner().invoke(app, [*command, "--blob-grace-s", "0"])
    assert result.exit_code == 0, result.output
    assert ", 1 unreferenced blobs removed" in result.output

    async def whole() -> object:
        async with open_store(url) as store:
            (kept,) = await store.list_events("t1", "r1")
            return await store.get_full_content("t1", kept["event_id"])

    assert asyncio.run(whole()) == "kept " * 50
    assert len(list(blobs.glob("*/*"))) == 1


def test_a_bad_policy_is_refused_naming_the_option(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["retention", "apply", "--policy", "trace: max_age=7x", "--store", f"jsonl://{tmp_path}"]
    )
    assert result.exit_code == 2
    assert "--policy" in result.output
    assert "category 'trace': max_age='7x' is not a duration" in result.output


async def test_on_the_bus_expiry_goes_through_the_topic_and_the_projection_s_tables_are_refused(
    kafka_bootstrap: str,
    bus_db: str,
    topic: str,
    bus_store: BusRunEventStore,
    make_projector: Callable[..., Projector],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with running(make_projector()):
        await _history(bus_store, threads=2, old_traces=3)
        refused = await cli("retention", "apply", "--policy", "max_age=30d", "--store", bus_db)
        assert refused.exit_code == 1
        assert "these read tables are a projection of topic" in refused.output
        assert len(await bus_store.retention_summaries("t0")) == 5
        url = f"kafka://{kafka_bootstrap}/{topic}?database={quote(bus_db, safe='')}"
        done = await cli("retention", "apply", "--policy", "max_age=30d; message: forever", "--store", url)
        assert done.exit_code == 0, done.output
        assert "2 threads looked at, 6 events expired from 2 of them" in done.output
        assert [s.seq for s in await bus_store.retention_summaries("t0")] == [4, 5]
        # --bus: the topic and database of the settings, as the projector is configured.
        for name, value in (("KAFKA", kafka_bootstrap), ("TOPIC", topic), ("DATABASE_URL", bus_db)):
            monkeypatch.setenv(f"RUNEVENTS_{name}", value)
        assert (await cli("retention", "set", "t1", "keep_events=1", "--bus")).exit_code == 0
        assert await bus_store.get_retention("t1") == parse_policy("keep_events=1")
        done = await cli("retention", "apply", "--policy", "forever", "--bus")
        assert done.exit_code == 0, done.output
        assert "2 threads looked at, 1 events expired from 1 of them" in done.output
        assert [s.seq for s in await bus_store.retention_summaries("t1")] == [5]
        both = await cli("retention", "apply", "--bus", "--store", url)
        assert both.exit_code == 2
        assert "give --store or --bus, not both" in both.output


def test_a_thread_s_own_policy_is_set_shown_and_cleared_from_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "store").mkdir()
    url = f"jsonl://{tmp_path / 'store'}"
    monkeypatch.setenv("RUNEVENTS_RETENTION", "max_age=90d")
    runner = CliRunner()
    shown = runner.invoke(app, ["retention", "show", "t1", "--store", url])
    assert shown.exit_code == 0, shown.output
    assert shown.output == "thread 't1': the default policy (max_age=90d)\n"
    done = runner.invoke(app, ["retention", "set", "t1", "trace: max_age=7d", "--store", url])
    assert done.exit_code == 0, done.output
    assert done.output == "thread 't1': forever; trace: max_age=1w\n"
    assert runner.invoke(app, ["retention", "show", "t1", "--store", url]).output == done.output
    cleared = runner.invoke(app, ["retention", "set", "t1", "--clear", "--store", url])
    assert cleared.output == "thread 't1': the default policy\n"
    # Without --policy, apply follows the setting.
    applied = runner.invoke(app, ["retention", "apply", "--dry-run", "--store", url])
    assert applied.exit_code == 0, applied.output
    assert "retention done: 1 threads looked at, 0 events expired" in applied.output
    both = runner.invoke(app, ["retention", "set", "t1", "forever", "--clear", "--store", url])
    assert both.exit_code == 2
    assert "give either a POLICY or --clear" in both.output


def test_a_bad_default_policy_in_the_settings_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNEVENTS_RETENTION", "keep_runs=0")
    result = CliRunner().invoke(app, ["retention", "apply", "--store", f"jsonl://{tmp_path}"])
    assert result.exit_code == 1
    assert result.output == (
        "error: setting retention (env RUNEVENTS_RETENTION): the default rule: keep_runs must be a whole "
        "number, at least 1, got 0\n"
    )
