"""How a consumer command (`runevents project`, `runevents usage run`) stops: within --stop-timeout-s.

SIGTERM or SIGINT stops the consumer, which then has most of the timeout to finish its batch and leave
its group; past the timeout, or on a second signal, the process exits 124 at once, its stacks printed
first when overdue. Nothing is lost either way: a batch not committed is read again. SIGUSR1 prints
where every task and thread is, and changes nothing.
"""

from __future__ import annotations

import asyncio
import faulthandler
import linecache
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Iterator
from typing import Annotated, Any, Final, NoReturn

import typer

# Under the stop grace deploy/compose.yaml gives (30 s), and Kubernetes' default (30 s).
STOP_TIMEOUT_S: Final = 20.0
# Of --stop-timeout-s, what the consumer may take to stop; the rest is for the process to end.
CONSUMER_SHARE: Final = 0.75
# The exit status of a consumer that did not stop in time, or was told twice (as timeout(1)'s).
EXIT_STOP_OVERDUE: Final = 124
# Should the event loop itself be stuck, a thread prints every thread's stack and exits 1 this much later.
BLOCKED_LOOP_GRACE_S: Final = 5.0
# What tasks still running once the consumer stopped get to end, even past its share of the timeout.
LAST_MOMENT_S: Final = 0.2

StopTimeout = Annotated[
    float,
    typer.Option(
        min=2.0,
        help="How long a SIGTERM or Ctrl-C may take: the batch in hand commits (or rolls back) and the "
        "group is left within it; past it, the process prints where it is stuck and exits "
        f"{EXIT_STOP_OVERDUE}.",
    ),
]


async def until_signalled(
    run: Callable[[asyncio.Event, float], Coroutine[Any, Any, None]],
    stop_timeout_s: float,
    log: logging.Logger,
) -> None:
    """`run(stop, its_stop_timeout_s)` until SIGTERM or SIGINT sets `stop`; the process ends within
    `stop_timeout_s` of the signal (`log` says how)."""
    # First of all: from here on, a SIGTERM stops the consumer. (Before, it ends the process, which
    # has opened nothing yet.)
    stopping = StopSignals(stop_timeout_s, log)
    faulthandler.enable()  # SIGABRT, and a crash, print every thread's stack
    consumer_stop_s = stop_timeout_s * CONSUMER_SHARE
    await run(stopping.requested, consumer_stop_s)
    if stopping.requested.is_set():
        await stopping.end_what_is_left(consumer_stop_s)


class StopSignals:
    """SIGTERM and SIGINT stop the consumer, which then has `timeout_s` before the process exits anyway.

    A second one exits at once. SIGUSR1 prints where every task and thread is, and changes nothing.
    """

    def __init__(self, timeout_s: float, log: logging.Logger) -> None:
        self.requested = asyncio.Event()
        self._timeout_s = timeout_s
        self._log = log
        self._loop = asyncio.get_running_loop()
        self._requested_at = 0.0
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._loop.add_signal_handler(signum, self._stop, signal.Signals(signum))
        self._loop.add_signal_handler(signal.SIGUSR1, print_stacks, "SIGUSR1")

    def _stop(self, signum: signal.Signals) -> None:
        if self.requested.is_set():
            self._log.warning("%s again: exiting at once (a batch not committed is read again)", signum.name)
            exit_now(EXIT_STOP_OVERDUE)
        self._log.info("%s: stopping within %g s", signum.name, self._timeout_s)
        self._requested_at = self._loop.time()
        self.requested.set()
        self._loop.call_later(self._timeout_s, self._overdue, signum)
        # The call above never comes if the loop itself is stuck: then a thread of faulthandler's
        # prints every thread's stack and exits 1.
        faulthandler.dump_traceback_later(self._timeout_s + BLOCKED_LOOP_GRACE_S, exit=True)

    def _overdue(self, signum: signal.Signals) -> None:
        self._log.error(
            "not stopped %g s after %s: exiting without finishing (a batch not committed is read "
            "again from the stored offsets); where it was:",
            self._timeout_s,
            signum.name,
        )
        print_stacks(f"{self._timeout_s:g} s after {signum.name}")
        exit_now(EXIT_STOP_OVERDUE)

    async def end_what_is_left(self, within_s: float) -> None:
        """Once the consumer stopped: cancel what still runs, and end the process without what has not
        ended `within_s` of the stop (a rollback waiting on a database that does not answer, say)."""
        left = asyncio.all_tasks() - {asyncio.current_task()}
        for task in left:
            task.cancel()
        if not left:
            return
        wait_s = max(self._requested_at + within_s - self._loop.time(), LAST_MOMENT_S)
        _, stuck = await asyncio.wait(left, timeout=wait_s)
        if stuck:
            # The server ends the connections they wait on (and rolls back what they held) as the
            # process exits: nothing is lost.
            self._log.warning("stopped; leaving %d tasks that did not end in time", len(stuck))
            exit_now(0)


def print_stacks(why: str) -> None:
    """Print on stderr what every asyncio task of this loop awaits, and every thread's stack."""
    tasks = sorted(asyncio.all_tasks(), key=lambda task: task.get_name())
    lines = [f"--- {why}: {len(tasks)} asyncio tasks, each down to what it awaits"]
    for task in tasks:
        lines.append(f"task {task.get_name()}:")
        lines.extend(f"  {place}" for place in awaits(task.get_coro()))
    lines.append(f"--- {why}: the threads")
    print("\n".join(lines), file=sys.stderr, flush=True)
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)


def awaits(awaitable: object) -> Iterator[str]:
    """Where a coroutine is, then where what it awaits is, and so on down to a future."""
    while awaitable is not None:
        frame = _first_set(awaitable, "cr_frame", "gi_frame", "ag_frame")
        if frame is None:
            yield f"(a {type(awaitable).__name__})"
            return
        code = frame.f_code
        line = linecache.getline(code.co_filename, frame.f_lineno).strip()
        yield f"{code.co_filename}:{frame.f_lineno} {code.co_name}: {line}"
        awaitable = _first_set(awaitable, "cr_await", "gi_yieldfrom", "ag_await")


def _first_set(thing: object, *names: str) -> Any:
    """The first of the attributes `names` (a coroutine's, a generator's, ...) that `thing` has set."""
    return next((value for name in names if (value := getattr(thing, name, None)) is not None), None)


def exit_now(status: int) -> NoReturn:
    """End the process with `status` at once, its log flushed; nothing else runs (no cleanup, no atexit)."""
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
