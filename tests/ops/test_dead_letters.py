"""`runevents dead-letters` against a real broker and PostgreSQL: list, show, retry, drop, all recorded."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from aiokafka import AIOKafkaProducer
from typer.testing import CliRunner, Result

from runevents.bus.projector import Projector
from runevents.cli import app
from runevents.devstack.postgres import free_port
from runevents.events import encode_put, prepare_event
from tests.bus.conftest import running
from tests.bus.test_projector import event, eventually, fetch


async def cli(*args: str) -> Result:
    """Run `runevents` in a thread of its own (the command runs its own event loop)."""
    return await asyncio.to_thread(CliRunner().invoke, app, list(args))


async def test_dead_letters_are_listed_shown_retried_and_dropped_and_every_step_is_recorded(
    kafka_bootstrap: str, bus_db: str, topic: str, make_projector: Callable[..., Projector], tmp_path: Path
):
    wrong_key = encode_put(prepare_event(event("t2", 0)))
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, value=b"not json at all", key=b"t1")
        await producer.send_and_wait(topic, value=wrong_key, key=b"t3")
    finally:
        await producer.stop()
    database = ("--database", bus_db)

    async with running(make_projector()):
        await eventually(bus_db, "SELECT count(*) FROM dead_letters", 2)
        letters = await fetch(bus_db, 'SELECT id, partition, "offset", reason FROM dead_letters')
        by_reason = {row["reason"].split(":")[0]: row["id"] for row in letters}
        garbage = by_reason["the value is not JSON"]
        (misrouted,) = set(by_reason.values()) - {garbage}
        sources = [f"{topic}/{row['partition']}/{row['offset']}" for row in letters]

        listed = await cli("dead-letters", "list", *database)
        assert listed.exit_code == 0, listed.output
        for expected in (*sources, "not JSON", "is not its thread id 't2'"):
            assert expected in listed.output

        shown = await cli("dead-letters", "show", str(garbage), *database)
        assert shown.exit_code == 0, shown.output
        assert "reason:      the value is not JSON" in shown.output
        assert "not json at all" in shown.output
        assert "status:      open" in shown.output

        # Published as it is, the record would only die again: refused, and nothing changes.
        refused = await cli("dead-letters", "retry", str(garbage), *database, "--kafka", kafka_bootstrap)
        assert refused.exit_code == 1
        assert "would be dead-lettered again (the value is not JSON" in refused.output
        assert (await fetch(bus_db, "SELECT status FROM dead_letters WHERE id = $1", garbage))[0][0] == "open"

        # The operator fixes the record: the replacement is published under the letter's key and projected.
        fixed = tmp_path / "fixed.json"
        fixed.write_bytes(encode_put(prepare_event(event("t1", 7))))
        retried = await cli(
            "dead-letters",
            "retry",
            str(garbage),
            *database,
            "--kafka",
            kafka_bootstrap,
            "--value-file",
            str(fixed),
        )
        assert retried.exit_code == 0, retried.output
        assert f"dead letter {garbage}: re-published to {topic}/" in retried.output
        await eventually(bus_db, "SELECT count(*) FROM run_events WHERE thread_id = 't1'", 1)
    where = retried.output.split("re-published to ")[1].split()[0]

    (letter,) = await fetch(
        bus_db, "SELECT status, resolved_at, resolution FROM dead_letters WHERE id = $1", garbage
    )
    assert letter["status"] == "retried"
    assert letter["resolved_at"] is not None
    assert letter["resolution"] == f"re-published with a replacement value to {where}"
    assert (await fetch(bus_db, "SELECT count(*) FROM dead_letters"))[0][0] == 2  # it did not die again

    again = await cli("dead-letters", "retry", str(garbage), *database, "--kafka", kafka_bootstrap)
    assert again.exit_code == 1
    assert f"dead letter {garbage} was already retried" in again.output

    no_reason = await cli("dead-letters", "drop", str(misrouted), *database, "--note", "  ")
    assert no_reason.exit_code == 1
    assert "needs a note" in no_reason.output
    dropped = await cli(
        "dead-letters", "drop", str(misrouted), *database, "--note", "test traffic of a broken client"
    )
    assert dropped.exit_code == 0, dropped.output
    (letter,) = await fetch(bus_db, "SELECT status, resolution FROM dead_letters WHERE id = $1", misrouted)
    assert (letter["status"], letter["resolution"]) == ("dropped", "dropped: test traffic of a broken client")

    open_now = await cli("dead-letters", "list", *database)
    assert open_now.exit_code == 0
    assert "no dead letters (open)" in open_now.output
    everything = await cli("dead-letters", "list", *database, "--status", "all")
    assert "retried" in everything.output
    assert "dropped" in everything.output


async def test_dead_letter_commands_refuse_bad_arguments_in_one_line(bus_db: str, kafka_bootstrap: str):
    missing = await cli("dead-letters", "show", "999", "--database", bus_db)
    assert missing.exit_code == 1
    assert missing.output.strip() == "error: no dead letter with id 999"
    status = await cli("dead-letters", "list", "--database", bus_db, "--status", "dead")
    assert status.exit_code == 1
    assert "--status takes open, retried, dropped or all" in status.output
    unreachable = await cli(
        "dead-letters", "list", "--database", "postgresql://runevents:s3cret@127.0.0.1:1/nowhere"
    )
    assert unreachable.exit_code == 1
    assert unreachable.output.startswith("error: ")
    assert len(unreachable.output.strip().splitlines()) == 1
    assert "s3cret" not in unreachable.output


async def test_a_retry_whose_brokers_do_not_answer_fails_in_one_line_and_leaves_the_letter_open(
    kafka_bootstrap: str, bus_db: str, topic: str, make_projector: Callable[..., Projector]
):
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, value=b"not json either", key=b"t1")
    finally:
        await producer.stop()
    async with running(make_projector()):
        await eventually(bus_db, "SELECT count(*) FROM dead_letters", 1)
    (letter,) = await fetch(bus_db, "SELECT id FROM dead_letters")
    closed = f"127.0.0.1:{free_port()}"
    command = [sys.executable, "-m", "runevents.cli", "dead-letters", "retry", str(letter["id"]), "--force"]
    failed = await asyncio.to_thread(
        subprocess.run,
        [*command, "--database", bus_db, "--kafka", closed],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert failed.returncode == 1
    assert failed.stderr.startswith("error: "), failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1, failed.stderr
    assert "Unclosed" not in failed.stderr  # the producer whose start failed is stopped too
    assert (await fetch(bus_db, "SELECT status FROM dead_letters"))[0][0] == "open"
