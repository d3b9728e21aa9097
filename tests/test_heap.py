"""Process tuning of runevents' own processes (runevents.heap)."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def _run(code: str) -> str:
    # In a process of its own: frozen objects are never collected, which must not leak into this session.
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120, check=True
    )
    return done.stdout.strip()


def test_objects_alive_at_the_freeze_are_out_of_every_collection_and_later_ones_are_not() -> None:
    out = _run(
        """
        import gc
        from runevents.heap import freeze_startup_objects
        before = [object()]
        frozen = freeze_startup_objects()
        after = [object()]
        tracked = {id(o) for generation in range(3) for o in gc.get_objects(generation)}
        print(frozen > 1000, id(before) in tracked, id(after) in tracked)
        """
    )
    assert out == "True False True"


def test_every_runevents_command_freezes_its_start_up_objects() -> None:
    out = _run(
        """
        import atexit, gc
        from runevents.cli.app import app
        assert gc.get_freeze_count() == 0
        atexit.register(lambda: print("frozen:", gc.get_freeze_count() > 10_000))
        app(["config"])
        """
    )
    assert out.splitlines()[-1] == "frozen: True"


def test_a_command_run_in_process_by_a_test_freezes_nothing() -> None:
    # Typer's test runner calls the command, not the app: the test process's objects stay collectable.
    out = _run(
        """
        import gc
        from typer.testing import CliRunner
        from runevents.cli.app import app
        result = CliRunner().invoke(app, ["config"])
        assert result.exit_code == 0, result.output
        print(gc.get_freeze_count())
        """
    )
    assert out == "0"
