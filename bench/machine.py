"""What the benchmarks report about the machine they ran on."""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Iterator


def load() -> str:
    """The 1, 5 and 15 minute load averages."""
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


@contextlib.contextmanager
def inputs_frozen() -> Iterator[None]:
    """Keep every object alive now (the events a benchmark built to write) out of garbage collections.

    A writer builds its events just before it writes them; a benchmark builds a million first and holds
    them, and every full collection would walk them all, charging the writer for the benchmark's stock
    (the sql store's put_batch: 14.2 against 11.0-12.0 µs of CPU per event). Unfrozen afterwards, so
    they can be freed.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
