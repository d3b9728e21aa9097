"""Stand-in for `deerflow.runtime.user_context`: the request's user in a context variable.

As deer-flow documents it: `set_current_user` / `reset_current_user` / `get_current_user` (None when
unset); `AUTO`, a read's default, is resolved by `resolve_user_id` to the current user's id and refused
with a RuntimeError when no user is set; an explicit str is used as given and None means every user.
"""

from __future__ import annotations

from contextvars import ContextVar, Token
from typing import Any, Final

_current_user: Final[ContextVar[Any]] = ContextVar("deerflow_current_user", default=None)


def set_current_user(user: Any) -> Token[Any]:
    """Make `user` (anything with an `id`) the current user."""
    return _current_user.set(user)


def reset_current_user(token: Token[Any]) -> None:
    """Undo a `set_current_user`."""
    _current_user.reset(token)


def get_current_user() -> Any:
    """The current user, or None."""
    return _current_user.get()


class _AutoSentinel:
    _instance: _AutoSentinel | None = None

    def __new__(cls) -> _AutoSentinel:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "<AUTO>"


AUTO: Final = _AutoSentinel()


def resolve_user_id(value: Any, *, method_name: str = "repository method") -> str | None:
    """AUTO: the current user's id (RuntimeError when none is set); otherwise `value` as given."""
    if isinstance(value, _AutoSentinel):
        user = _current_user.get()
        if user is None:
            raise RuntimeError(
                f"{method_name} called with user_id=AUTO but no user context is set; pass an explicit "
                "user_id, set the contextvar via auth middleware, or opt out with user_id=None"
            )
        return str(user.id)
    return None if value is None else str(value)
