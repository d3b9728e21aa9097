"""`make bench`: `python -m bench [--quick] [--fsync] [NAME ...]` runs the benchmarks in this directory.

With no names it runs all of them, jsonl_put first; `python -m bench sql_put` runs only that one.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Final

from bench import (
    broker,
    bus_e2e,
    encryption,
    jsonl_put,
    replay,
    retention,
    serve,
    sql_put,
    sql_read,
    subscribe,
)
from runevents.heap import freeze_startup_objects, keep_heap_top

BENCHMARKS: Final[dict[str, Callable[[Sequence[str]], None]]] = {
    "jsonl_put": jsonl_put.main,
    "sql_put": sql_put.main,
    "sql_read": sql_read.main,
    "bus_e2e": bus_e2e.main,
    "replay": replay.main,
    "subscribe": subscribe.main,
    "serve": serve.main,
    "broker": broker.main,
    "retention": retention.main,
    "encryption": encryption.main,
}


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line and run the chosen benchmarks one after another."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help=f"any of {', '.join(BENCHMARKS)} (default: all)"
    )
    parser.add_argument("--quick", action="store_true", help="smaller runs, for a smoke test")
    parser.add_argument("--fsync", action="store_true", help="jsonl_put: durability=fsync")
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    chosen = list(dict.fromkeys(args.names)) if args.names else list(BENCHMARKS)
    # The benchmarks run as runevents' own processes do (see runevents.heap); said in every report.
    keep_heap_top()
    freeze_startup_objects()
    for number, name in enumerate(chosen):
        if number:
            print()
        options = ["--quick"] if args.quick else []
        if name == "jsonl_put" and args.fsync:
            options.append("--fsync")
        BENCHMARKS[name](options)


if __name__ == "__main__":
    main()
