"""Starting aiokafka clients so that a start cancelled half-way leaves no connection behind."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Final

# How long a cancelled start may run on to its end (it is mid-request: one round trip, as a rule).
START_GRACE_S: Final = 5.0
# aiokafka's, and what `runevents project` and `runevents usage run` use unless told.
DEFAULT_SESSION_TIMEOUT_MS: Final = 10_000


async def start_fully(start: Callable[[], Awaitable[None]]) -> None:
    """Await a Kafka client's `start`, letting it finish (for up to START_GRACE_S) if the caller is cancelled.

    aiokafka's bootstrap keeps its first connection in a local variable until the cluster's metadata
    has come back, and does not close it when cancelled while it waits: the connection is then
    reachable by nothing, and the client's `stop`/`close` cannot close it (a ResourceWarning once it is
    collected, and a socket left open meanwhile). Run to its end, the start registers or closes it.
    """
    starting = asyncio.ensure_future(start())
    try:
        await asyncio.shield(starting)
    except asyncio.CancelledError:
        await asyncio.wait((starting,), timeout=START_GRACE_S)
        if starting.done():
            if not starting.cancelled():
                starting.exception()  # retrieved: the cancellation is what the caller hears of
        else:
            starting.cancel()
        raise


def group_member_options(session_timeout_ms: int) -> dict[str, int]:
    """The options of a consumer group member that the group drops after `session_timeout_ms` of silence."""
    return {
        "session_timeout_ms": session_timeout_ms,
        "heartbeat_interval_ms": max(session_timeout_ms // 4, 250),
        # A join is answered within the rebalance timeout (the session timeout, as aiokafka sets it) by
        # a broker that follows Kafka's protocol; 5 s on top is what Kafka's own client allows. Tansu
        # can hold every member's join for good when one leaves during a rebalance; a join asked
        # again after this timeout ends it, where aiokafka's default (40 s) left the group idle that
        # long (the fault tests saw a projector group apply nothing for over 60 s).
        "request_timeout_ms": session_timeout_ms + 5000,
    }
