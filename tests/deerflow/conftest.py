"""deer-flow's modules for the drop-in's tests: the stand-in, or the real ones from a checkout.

`RUNEVENTS_DEERFLOW_SRC=/path/to/deer-flow` (a checkout of bytedance/deer-flow whose dependencies are
installed) runs each test that takes `deerflow` a second time against deer-flow's own modules;
without it that variant is skipped, and a checkout that does not import fails.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

STAND_IN = Path(__file__).parent / "stand_in"
SOURCE_ENV = "RUNEVENTS_DEERFLOW_SRC"
HARNESS = Path("backend/packages/harness")


def _forget_deerflow() -> None:
    for name in [name for name in sys.modules if name == "deerflow" or name.startswith("deerflow.")]:
        del sys.modules[name]


@pytest.fixture(params=["stand-in", "deer-flow"])
def deerflow(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """deer-flow's `user_context` module, importable as deer-flow's code imports it."""
    if request.param == "stand-in":
        root = STAND_IN
    else:
        source = os.environ.get(SOURCE_ENV)
        if not source:
            pytest.skip(f"{SOURCE_ENV} is not set: deer-flow's own modules are not here")
        root = Path(source) / HARNESS
    monkeypatch.syspath_prepend(str(root))
    _forget_deerflow()
    try:
        yield importlib.import_module("deerflow.runtime.user_context")
    finally:
        _forget_deerflow()


@pytest.fixture
def no_deerflow(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No deer-flow importable, whatever is installed."""
    _forget_deerflow()
    monkeypatch.setitem(sys.modules, "deerflow", None)  # None in sys.modules: ImportError on import
    yield
    _forget_deerflow()


@contextmanager
def as_user(user_context: ModuleType, user_id: str) -> Iterator[None]:
    """Run the block as deer-flow's current user `user_id` (as its auth middleware sets it)."""
    token = user_context.set_current_user(SimpleNamespace(id=user_id, email=f"{user_id}@example.com"))
    try:
        yield
    finally:
        user_context.reset_current_user(token)


def message(thread_id: str, run_id: str, text: str, **extra: Any) -> dict[str, Any]:
    """A deer-flow `llm.human.input` event as its RunJournal buffers it (no user_id key)."""
    return {
        "thread_id": thread_id,
        "run_id": run_id,
        "event_type": "llm.human.input",
        "category": "message",
        "content": {"type": "human", "content": text, "id": f"m-{text}"},
        "metadata": {"caller": "lead_agent"},
        **extra,
    }
