"""What the database can raise, and the runevents errors a store raises instead, in one line."""

from __future__ import annotations

from typing import Final

import asyncpg
from sqlalchemy.exc import DBAPIError

from runevents.errors import RunEventsError
from runevents.masking import error_line

# COPY goes to asyncpg directly, so its errors arrive unwrapped by SQLAlchemy.
# asyncpg's InternalClientError: a connection the server ended mid-operation can surface as one.
DATABASE_ERRORS: Final = (
    DBAPIError,
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)


def reason_of(error: BaseException) -> str:
    """The first line of what the database (or driver) said went wrong, its secrets masked."""
    return error_line(error, named=False)


class WriteFailedError(RunEventsError):
    """The database refused or lost a write; nothing of it was stored unless the message says otherwise."""


class ReadFailedError(RunEventsError):
    """The database did not answer a read (unreachable, refused, lost mid-query); the message says why."""
