"""deer-flow's modules for the drop-in's tests: the stand-in, or deer-flow's own user context.

`RUNEVENTS_DEERFLOW_SRC=/path/to/deer-flow` (a checkout of bytedance/deer-flow) runs each test that
takes `deerflow` a second time with deer-flow's own `runtime/user_context.py`, loaded from the
checkout by itself: deer-flow's packages import its whole runtime (LangGraph, LangChain, and Python
3.12 or later), which the module needs none of. The engine stays the stand-in's. Without the variable
that variant is skipped; with it, a checkout that does not load fails.
"""

from __future__ import annotations

import importlib
import importlib.util
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
USER_CONTEXT = "deerflow.runtime.user_context"


def _forget_deerflow() -> None:
    for name in [name for name in sys.modules if name == "deerflow" or name.startswith("deerflow.")]:
        del sys.modules[name]


@pytest.fixture(params=["stand-in", "deer-flow"])
def deerflow(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """deer-flow's `user_context` module, importable as deer-flow's code imports it."""
    source = os.environ.get(SOURCE_ENV)
    if request.param == "deer-flow" and not source:
        pytest.skip(f"{SOURCE_ENV} is not set: deer-flow's own user context is not here")
    monkeypatch.syspath_prepend(str(STAND_IN))
    _forget_deerflow()
    try:
        if request.param == "deer-flow":
            assert source is not None
            _load_as(USER_CONTEXT, Path(source) / HARNESS / "deerflow/runtime/user_context.py")
        yield importlib.import_module(USER_CONTEXT)
    finally:
        _forget_deerflow()


def _load_as(name: str, path: Path) -> None:
    """Load the file at `path` as module `name` (its parent packages: the stand-in's)."""
    importlib.import_module(name.rsplit(".", 1)[0])
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)


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
