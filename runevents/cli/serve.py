"""`runevents serve`: a store's reads and live streams over HTTP; `hash-token`: a line of its token file."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import secrets
import signal
import socket
import sys
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Annotated, Final

import typer
import uvicorn
from sqlalchemy.exc import SQLAlchemyError

from runevents.cli.store_url import StoreUrlOption, store_url
from runevents.cli.support import error_line, fail, log_to_stderr, mask, refused_connection, settings_of
from runevents.cli.usage import usage_reader_for
from runevents.errors import InvalidQueryError, RunEventsError
from runevents.serve import TokenFileError, Tokens, create_app, hash_token
from runevents.serve.tokens import ADMIN
from runevents.store import RunEventStore, open_store
from runevents.store.arguments import check_id

log = logging.getLogger("runevents.serve")

# How long the store may take to answer its first read before `serve` gives up on it.
STARTUP_CHECK_S: Final = 15.0
# How long a stop waits for responses in flight (live streams end at once on a stop).
GRACEFUL_STOP_S: Final = 10.0
_PROBE_THREAD: Final = "runevents-serve-startup"


def serve(
    store: StoreUrlOption = None,
    host: Annotated[
        str, typer.Option(help="Address to listen on; 0.0.0.0 for every interface.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8470,
    token_file: Annotated[
        Path | None,
        typer.Option(
            help="Bearer tokens, one `<sha256 of the token> <user id or admin>` a line (see "
            "`runevents hash-token`); without it, auth is off and everyone reads every thread.",
            show_default=False,
        ),
    ] = None,
    heartbeat: Annotated[
        float, typer.Option(min=0, help="Seconds between the ping comments of live streams; 0: none.")
    ] = 15.0,
) -> None:
    """Serve a store's reads over HTTP: chat history pages, run messages and events, live SSE streams.

    Routes: /api/threads/{thread}/messages/page, .../runs/{run}/messages, .../runs/{run}/events,
    .../messages/count, .../messages/seqs, .../stream (Server-Sent Events), .../token-usage (sql on
    PostgreSQL and bus stores, kept by `runevents usage run`), and /healthz, /metrics, /openapi.json.
    Runs until SIGTERM (exit 0) or Ctrl-C (exit 130).
    """
    settings = settings_of()
    store_at = store_url(store, settings)
    shown = mask(store_at)
    tokens: Tokens | None = None
    if token_file is not None:
        try:
            tokens = Tokens.from_file(token_file)
        except TokenFileError as error:
            fail(str(error))
    try:
        opened = open_store(store_at)
    # ImportError: a driver named in the URL that is not installed.
    except (RunEventsError, ValueError, ImportError) as error:
        fail(f"cannot open the store: {error_line(error)}")
    try:
        listener = listen_on(host, port)
    except OSError as error:
        fail(f"cannot listen on {_address(host, port)}: {error_line(error)}")
    if tokens is None and not _loopback(host):
        typer.echo(
            f"warning: auth is off (no --token-file): anyone who reaches {_address(host, port)} "
            "reads every thread of the store",
            err=True,
        )
    log_to_stderr(settings.log_level)
    # Token usage lives beside PostgreSQL read tables (sql and bus stores), kept by `runevents usage run`.
    usage = usage_reader_for(store_at)
    server = StoppableServer(
        uvicorn.Config(
            create_app(opened, tokens=tokens, heartbeat_s=heartbeat, usage=usage),
            log_config=None,  # uvicorn's lines go through runevents' log handler, masked
            # A line a request, masked, cost a third of a page read's time; /metrics counts requests by
            # route and status, and log_level DEBUG brings the lines back.
            access_log=settings.log_level == "DEBUG",
            ws="none",
            lifespan="on",
            timeout_graceful_shutdown=int(GRACEFUL_STOP_S),
            server_header=False,
        )
    )
    auth = "off" if tokens is None else f"on, {len(tokens)} token(s)"
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(
                _serve(server, opened, listener, f"{shown} on http://{_address(host, port)} (auth {auth})")
            )
    # SQLAlchemyError and OSError: the store's database refused or did not answer its first read.
    except (RunEventsError, SQLAlchemyError, OSError, ValueError, ImportError) as error:
        reason = error_line(error)
        # The sql store says so itself (ReadFailedError); a driver's own error does not.
        if isinstance(error, TimeoutError) or (refused_connection(error) and "did not answer" not in reason):
            fail(f"cannot serve {shown}: the store refused or did not answer: {reason}")
        fail(f"cannot serve {shown}: {reason}")
    finally:
        listener.close()
    if server.stopped_by == signal.SIGINT:
        raise typer.Exit(130)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where it is installed (not on Windows), else asyncio's own."""
    try:
        import uvloop
    except ImportError:
        return None
    # Fan-out is the event loop's work: one write wakes every stream of its thread.
    return uvloop.new_event_loop


async def _serve(server: StoppableServer, store: RunEventStore, listener: socket.socket, what: str) -> None:
    """Check that the store answers, then serve until a signal stops the server."""
    try:
        # A wrong URL or a database that is down is one line now, not a 500 on every request later.
        await asyncio.wait_for(store.count_messages(_PROBE_THREAD), STARTUP_CHECK_S)
    except BaseException:
        await store.close()
        raise
    log.info("serving %s", what)
    # The app's lifespan closes the store when the server stops.
    await server.serve(sockets=[listener])


class StoppableServer(uvicorn.Server):
    """uvicorn's server, ending as runevents' other long commands do when a signal stops it."""

    stopped_by: int | None = None

    def handle_exit(self, sig: int, frame: object) -> None:
        """Note which signal stopped the server, then stop it as uvicorn does (streams end at once)."""
        self.stopped_by = self.stopped_by or sig
        super().handle_exit(sig, frame)  # type: ignore[arg-type]

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """uvicorn's signal handling, without raising the signal again once stopped.

        uvicorn re-raises it so that the process dies by it; runevents exits 0 on SIGTERM (as the
        projector does) and 130 on Ctrl-C instead.
        """
        with super().capture_signals():
            yield
            self._captured_signals.clear()


def listen_on(host: str, port: int) -> socket.socket:
    """A socket bound to host:port, so that a port in use is one line before anything starts."""
    family, kind, protocol, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    listener = socket.socket(family, kind, protocol)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
    except OSError:
        listener.close()
        raise
    return listener


def _loopback(host: str) -> bool:
    """Whether `host` is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def hash_token_command(
    user: Annotated[
        str, typer.Argument(help=f"The user whose records the token reads, or {ADMIN} for everyone's.")
    ],
    generate: Annotated[
        bool,
        typer.Option("--generate", help="Make a new random token and print it on stderr, once."),
    ] = False,
) -> None:
    """Print a token file line, `<sha256 of the token> <user>`, for a token read from stdin.

    The token never goes on the command line (where `ps` and the shell history would keep it):
    `printf %s "$TOKEN" | runevents hash-token alice >> tokens`, or `runevents hash-token alice
    --generate >> tokens` for a new one.
    """
    try:
        check_id("user", user)
    except InvalidQueryError as error:
        fail(f"user: {error.problem}")
    if generate:
        token = secrets.token_urlsafe(32)
        typer.echo(f"token for {user} (shown once, keep it secret): {token}", err=True)
    elif sys.stdin.isatty():
        token = typer.prompt("token", hide_input=True, err=True)
    else:
        token = sys.stdin.read().removesuffix("\n").removesuffix("\r")
    try:
        digest = hash_token(token)
    except ValueError as error:
        fail(str(error))
    typer.echo(f"{digest} {user}")
