"""`runevents demo --serve`: the dev stack's read tables over HTTP, the run viewer at `/`, until Ctrl-C."""

from __future__ import annotations

import uvicorn
from rich.console import Console
from rich.text import Text

from runevents.cli.serve import GRACEFUL_STOP_S, StoppableServer, listen_on
from runevents.serve import create_app
from runevents.store import RunEventStore


async def serve_until_stopped(console: Console, store: RunEventStore, thread: str) -> None:
    """Serve `store` on a free loopback port until Ctrl-C or SIGTERM; the app closes the store."""
    listener = listen_on("127.0.0.1", 0)
    port = listener.getsockname()[1]
    server = StoppableServer(
        uvicorn.Config(
            create_app(store),
            log_config=None,
            log_level="warning",
            ws="none",
            lifespan="on",
            timeout_graceful_shutdown=int(GRACEFUL_STOP_S),
            server_header=False,
        )
    )
    console.print(
        Text.assemble(
            "\nthe read tables are served (auth off, this machine only): run viewer at ",
            (f"http://127.0.0.1:{port}/#thread={thread}", "bold"),
            f"\n  the API too: curl http://127.0.0.1:{port}/api/threads/{thread}/messages/page"
            "\n  Ctrl-C stops the server, then the projectors and the dev stack",
        ),
        soft_wrap=True,
    )
    try:
        await server.serve(sockets=[listener])
    finally:
        listener.close()
