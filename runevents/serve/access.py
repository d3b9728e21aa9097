"""Who may read what: the app's shared state, the caller's `Reader` (from its token), the 404 rule."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Final

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from runevents.serve.metrics import HttpMetrics
from runevents.serve.tokens import EVERYONE, Reader, Tokens
from runevents.store import RunEventStore

if TYPE_CHECKING:
    from runevents.serve.usage import TokenUsageReader

# Said for a missing and an unknown token alike, and never quoting what was sent.
UNAUTHORIZED: Final = "a bearer token is required, and this one is not known"


@dataclass(frozen=True)
class Served:
    """What the routes of one app share: its store, its tokens (None: auth off), its metrics, its usage."""

    store: RunEventStore
    tokens: Tokens | None
    metrics: HttpMetrics
    heartbeat_s: float
    # The token usage kept beside the store's read tables, if any (the token-usage route).
    usage: TokenUsageReader | None = None


def served_of(request: Request) -> Served:
    """The app's shared state."""
    served: Served = request.app.state.served
    return served


def store_of(request: Request) -> RunEventStore:
    """The store the app serves."""
    return served_of(request).store


_bearer = HTTPBearer(
    auto_error=False,
    description="A token of the server's token file; a user's token reads only that user's records.",
)


async def reader_of(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Reader:
    """Whose records this request may read; 401 without a known token when auth is on."""
    tokens = served_of(request).tokens
    if tokens is None:
        return EVERYONE
    reader = None if credentials is None else tokens.reader(credentials.credentials)
    if reader is None:
        raise HTTPException(401, UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"})
    return reader


StoreDep = Annotated[RunEventStore, Depends(store_of)]
ReaderDep = Annotated[Reader, Depends(reader_of)]


def not_found(thread_id: str) -> HTTPException:
    """The answer for a thread the caller may not see: the same whether or not it exists for others."""
    return HTTPException(404, f"thread {thread_id!r} not found")


async def check_visible(store: RunEventStore, thread_id: str, reader: Reader, *, seen: bool = False) -> None:
    """404 unless `reader` may see the thread: reads everyone's, or the thread holds a message of theirs.

    `seen`: the caller already read a record of the reader in this thread (nothing to ask). The
    contract has no cheaper "does this user have any record here" than counting their messages; a
    thread that holds only non-message records of a user is, to that user, not there.
    """
    if reader.user_id is None or seen:
        return
    if await store.count_messages(thread_id, user_id=reader.user_id) == 0:
        raise not_found(thread_id)
