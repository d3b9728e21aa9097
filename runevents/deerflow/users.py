"""deer-flow's current user, as its DB store reads it: reads default to it, writes record it.

deer-flow keeps the request's user in a context variable (`deerflow.runtime.user_context`). Its three
stores disagree on what a read with no `user_id` means: the memory and JSONL stores ignore users, the DB
store (the one multi-worker deployments run) reads the current user's records only and refuses when no
user is set. runevents follows the DB store on every backend. Without deer-flow installed, there is no
current user: reads with no `user_id` read every user's records, as runevents' own stores do.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Final, cast

USER_CONTEXT: Final = "deerflow.runtime.user_context"


class _Auto:
    """The default of a read's `user_id`: the current user (deer-flow's `AUTO`)."""

    _instance: _Auto | None = None

    def __new__(cls) -> _Auto:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "<AUTO>"


AUTO: Final = _Auto()
UserArgument = str | None | object  # a user id, None (every user), or AUTO (deer-flow's or ours)


class Users:
    """Where the current user comes from: deer-flow's `user_context` module, or nowhere."""

    def __init__(self, user_context: ModuleType | None) -> None:
        self._context = user_context

    @classmethod
    def find(cls) -> Users:
        """deer-flow's user context if it can be imported, else none."""
        try:
            return cls(importlib.import_module(USER_CONTEXT))
        except ImportError:
            return cls(None)

    @property
    def from_deerflow(self) -> bool:
        """Whether a current user comes from deer-flow's context."""
        return self._context is not None

    def current(self) -> str | None:
        """The current user's id, None when none is set (what a write records)."""
        if self._context is None:
            return None
        user = self._context.get_current_user()
        return None if user is None else str(user.id)

    def resolve(self, value: UserArgument, method: str) -> str | None:
        """A read's user: the current one for AUTO (deer-flow refuses when none is set), else `value`."""
        if not self._is_auto(value):
            # Anything else is checked by the store, as any read's user_id is (InvalidQueryError).
            return cast("str | None", value)
        if self._context is None:
            return None
        # deer-flow's own function: its error, word for word, when no user is set.
        resolved: str | None = self._context.resolve_user_id(self._context.AUTO, method_name=method)
        return resolved

    def _is_auto(self, value: object) -> bool:
        if value is AUTO:
            return True
        sentinel = getattr(self._context, "_AutoSentinel", None)
        return sentinel is not None and isinstance(value, sentinel)
