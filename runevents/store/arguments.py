"""The rule for read and delete arguments, checked once for every backend before any of them runs.

A read or delete given an argument no backend could answer the same way raises `InvalidQueryError`
naming the argument, on every backend alike: never a driver's overflow, a `TypeError` or an empty
answer that hides the slip. In particular no missing argument ever widens a delete: a `None` run id
is an error, not "every run".

- Ids (`thread_id`, `run_id`, `user_id`, each element of `run_ids`) follow the write rule: a str of
  1 to 64 characters without control characters or lone surrogates. An id a write refuses can hold
  nothing, so a read of one is a slip, not an empty result.
- Other strings (`task_id`, each of `event_types` and `identities`) are strs that a text column can
  hold: no NUL and no lone surrogate. A message id sought in `identities` is at most 512 characters:
  longer ones are not indexed, so no backend finds them (`MAX_INDEXED_MESSAGE_ID`).
- `limit` is an int from 0 to `MAX_LIMIT`; seqs are ints from 0 to the largest bigint. `bool` is
  not taken for an int anywhere.
- Collections are collections of strs (not a bare str, not None) of at most `MAX_ITEMS` elements:
  one query binds each element, and drivers cap a statement's parameters (asyncpg at 32,767).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Final

from runevents.errors import InvalidQueryError
from runevents.events import MAX_ID_LENGTH, text_problem

MAX_LIMIT: Final = 1_000_000
MAX_SEQ: Final = 2**63 - 1
MAX_ITEMS: Final = 10_000


def check_id(argument: str, value: object) -> None:
    """Reject an id argument that no event could carry."""
    if not isinstance(value, str):
        raise InvalidQueryError(argument, f"must be a str, got {type(value).__name__}")
    if not value:
        raise InvalidQueryError(argument, "must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidQueryError(argument, f"must be at most {MAX_ID_LENGTH} characters (got {len(value)})")
    problem = text_problem(value)
    if problem is not None:
        raise InvalidQueryError(argument, problem)


def check_user(value: object) -> None:
    """Reject a `user_id` filter that is neither None nor an id."""
    if value is not None:
        check_id("user_id", value)


def check_text(argument: str, value: object) -> str:
    """`value` if it is a str a text column can hold, else `InvalidQueryError`."""
    if not isinstance(value, str):
        raise InvalidQueryError(argument, f"must be a str, got {type(value).__name__}")
    problem = text_problem(value, control_allowed=True)
    if problem is not None:
        raise InvalidQueryError(argument, problem)
    return value


def check_page(limit: object, before_seq: object = None, after_seq: object = None) -> None:
    """Reject page arguments no backend can answer the same way (non-integer or out of range)."""
    _check_int("limit", limit, MAX_LIMIT)
    for name, value in (("before_seq", before_seq), ("after_seq", after_seq)):
        if value is not None:
            _check_int(name, value, MAX_SEQ)


def check_names(argument: str, values: object, *, ids: bool = False, longest: int | None = None) -> None:
    """Reject a collection argument that is not a collection of acceptable strings."""
    if values is None or isinstance(values, str | bytes) or not isinstance(values, Collection):
        got = "a single string" if isinstance(values, str | bytes) else type(values).__name__
        raise InvalidQueryError(argument, f"must be a collection of strings, got {got}")
    if len(values) > MAX_ITEMS:
        raise InvalidQueryError(argument, f"must hold at most {MAX_ITEMS} items (got {len(values)})")
    for position, value in enumerate(values):
        element = f"{argument}[{position}]"
        if ids:
            check_id(element, value)
            continue
        text = check_text(element, value)
        if longest is not None and len(text) > longest:
            raise InvalidQueryError(element, f"must be at most {longest} characters (got {len(text)})")


def _check_int(argument: str, value: object, largest: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidQueryError(argument, f"must be an int, got {type(value).__name__}")
    if not 0 <= value <= largest:
        raise InvalidQueryError(argument, f"must be from 0 to {largest}, got {value}")


def check_seqs(argument: str, values: object) -> list[int]:
    """A collection of seqs (ints from 1), at most `MAX_ITEMS`, as a sorted list without repeats."""
    if values is None or isinstance(values, str | bytes) or not isinstance(values, Collection):
        raise InvalidQueryError(argument, f"must be a collection of ints, got {type(values).__name__}")
    if len(values) > MAX_ITEMS:
        raise InvalidQueryError(argument, f"must hold at most {MAX_ITEMS} items (got {len(values)})")
    for position, value in enumerate(values):
        _check_int(f"{argument}[{position}]", value, MAX_SEQ)
        if value == 0:
            raise InvalidQueryError(f"{argument}[{position}]", "must be at least 1 (seqs start at 1)")
    return sorted(set(values))
