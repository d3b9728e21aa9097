"""The one rule for the names an operator gives: PostgreSQL schemas, projections and Kafka topics.

- A schema or projection name (a projection's name is its schema's default name) is a plain
  lower-case PostgreSQL identifier: a letter or `_`, then letters, digits or `_`, at most 63 bytes
  (PostgreSQL's limit; longer names are silently cut, so two would meet), and neither
  `information_schema` nor `pg_...` (PostgreSQL's own). Plain, so quoted and unquoted it is the same
  name, and it can go into a NOTIFY payload or a consumer group id as it is.
- A topic name is Kafka's rule, `[A-Za-z0-9._-]`, not `.` or `..`, and at most 236 characters:
  Kafka takes 249, and the dead-letter topic adds `.dead-letters` (13) to it.

Every command checks a name before it creates or touches anything, so a refused name leaves
nothing half-made.
"""

from __future__ import annotations

import re
from typing import Final

from runevents.errors import RunEventsError

MAX_IDENTIFIER_BYTES: Final = 63
MAX_TOPIC_LENGTH: Final = 249 - len(".dead-letters")
_IDENTIFIER: Final = re.compile(r"[a-z_][a-z0-9_]*")
_TOPIC: Final = re.compile(r"[A-Za-z0-9._-]+")


class InvalidNameError(RunEventsError, ValueError):
    """A schema, projection or topic name that breaks the naming rule; the message says how."""

    def __init__(self, kind: str, name: object, problem: str) -> None:
        self.kind = kind
        self.name = name
        super().__init__(f"{kind} name {name!r} {problem}")


def check_identifier(kind: str, name: object) -> str:
    """`name` if it is a plain lower-case PostgreSQL identifier we may use, else `InvalidNameError`."""
    if not isinstance(name, str):
        raise InvalidNameError(kind, name, f"must be a str, got {type(name).__name__}")
    if not _IDENTIFIER.fullmatch(name):
        raise InvalidNameError(
            kind, name, "must be a lower-case identifier: a letter or _, then letters, digits or _"
        )
    if len(name.encode()) > MAX_IDENTIFIER_BYTES:
        raise InvalidNameError(kind, name, f"is {len(name)} bytes; PostgreSQL's limit is 63")
    if name == "information_schema" or name.startswith("pg_"):
        raise InvalidNameError(kind, name, "is reserved by PostgreSQL (information_schema, pg_*)")
    return name


def check_topic(name: object, kind: str = "topic") -> str:
    """`name` if Kafka takes it as a topic name with room for its dead-letter topic, else raise."""
    if not isinstance(name, str):
        raise InvalidNameError(kind, name, f"must be a str, got {type(name).__name__}")
    if not _TOPIC.fullmatch(name) or name in (".", ".."):
        raise InvalidNameError(kind, name, "must be letters, digits, '.', '_' or '-' (and not '.' or '..')")
    if len(name) > MAX_TOPIC_LENGTH:
        raise InvalidNameError(
            kind,
            name,
            f"is {len(name)} characters; {MAX_TOPIC_LENGTH} at most leave room for '.dead-letters'",
        )
    return name
