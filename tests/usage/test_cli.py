"""`runevents usage show` and `usage run` as an operator meets them: real processes, one-line errors."""

from __future__ import annotations

import asyncio
import signal
import uuid

from sqlalchemy.engine import make_url

from runevents.bus.store import BusRunEventStore
from runevents.devstack.postgres import free_port
from tests.cli.test_cli_errors import PLANTED, failed_cleanly, runevents
from tests.faults.projectors import ProjectorProcess
from tests.usage.caught_up import wait_caught_up
from tests.usage.test_kills import usage_process

CALLS = [
    ("r1", "gpt-4o", {"input_tokens": 1200, "output_tokens": 300}),
    ("r1", "gpt-4o", None),
    ("r2", "claude-sonnet-4", {"prompt_tokens": 50, "completion_tokens": 7, "total_tokens": 57}),
]


async def test_usage_run_keeps_usage_stops_on_sigterm_and_show_prints_it(
    kafka_bootstrap: str, bus_db: str, topic: str
) -> None:
    store = BusRunEventStore(kafka_bootstrap, bus_db, topic=topic)
    try:
        await store.publish_batch(
            [
                {
                    "thread_id": "t-show",
                    "run_id": run,
                    "event_type": "llm.ai.response",
                    "category": "message",
                    "content": {"type": "ai", "content": "", "response_metadata": {"model_name": model}},
                    "metadata": {"caller": "lead_agent", **({"usage": usage} if usage else {})},
                }
                for run, model, usage in CALLS
            ]
        )
    finally:
        await store.close()
    group = f"usage-{uuid.uuid4().hex[:8]}"
    consumer = ProjectorProcess("usage", usage_process(kafka_bootstrap, bus_db, topic, "--group", group))
    try:
        await wait_caught_up(kafka_bootstrap, topic, bus_db, group, alive=lambda: _alive(consumer))
        code = await asyncio.to_thread(consumer.ended, signal.SIGTERM)
    finally:
        consumer.wait_killed()
    assert code == 0, consumer.output()
    assert "3 calls kept (1 without usage, 0 of unusable usage)" in consumer.output()

    code, output = await asyncio.to_thread(runevents, "usage", "show", "t-show", "--database", bus_db)
    assert code == 0, output
    lines = [line.rstrip() for line in output.splitlines()]
    assert lines[0] == (
        "thread 't-show': 1,557 tokens (1,250 in, 307 out) in 3 calls over 2 runs; 1 calls of unknown usage"
    )
    assert any(line.split("│")[1:4] == [" gpt-4o          ", " 1,500  ", " 1    "] for line in lines), output
    runs = [[cell.strip() for cell in line.split("│")[1:-1]] for line in lines if "│ r" in line]
    assert runs == [["r1", "1,500", "1,200", "300", "2", "1"], ["r2", "57", "50", "7", "1", "0"]], output

    code, output = await asyncio.to_thread(runevents, "usage", "show", "t-none", "--database", bus_db)
    assert (code, output.strip()) == (0, "no model calls in thread 't-none'")


def _alive(process: ProjectorProcess) -> None:
    code = process.process.poll()
    assert code is None, f"usage run exited {code}:\n{process.output()}"


async def test_usage_commands_fail_in_one_line_without_the_password(pg_database: str, topic: str) -> None:
    refused = f"postgresql://bob:{PLANTED}@127.0.0.1:{free_port()}/runs"
    code, output = await asyncio.to_thread(runevents, "usage", "show", "t1", "--database", refused)
    assert "refused or did not answer" in failed_cleanly(code, output, "did not answer")

    code, output = await asyncio.to_thread(
        runevents, "usage", "run", "--database", refused, "--kafka", f"127.0.0.1:{free_port()}"
    )
    assert "usage consumer did not start" in failed_cleanly(code, output, "did not answer")

    # A database never upgraded: the command names what fixes it.
    secret = make_url(pg_database).password or PLANTED
    code, output = await asyncio.to_thread(runevents, "usage", "show", "t1", "--database", pg_database)
    line = failed_cleanly(code, output, "runevents db upgrade", secret=secret)
    assert "keeps no token usage" in line
