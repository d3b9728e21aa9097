"""Process tuning for runevents' own processes: the heap top kept, and start-up objects out of the GC's way.

glibc returns the top of the heap to the OS (`brk`) whenever more than 128 KiB of it is free. orjson
allocates each output in a large buffer and shrinks it, so an encoder whose outputs are kept (a batch
of events waiting for its COPY) grows and trims the heap top over and over: a system call and fresh
pages per value, 3 to 4 µs where the encoding itself takes 0.1. Padding the heap top (`M_TOP_PAD`)
ends it, at the price of keeping that much memory mapped. Library users get the same by starting a
process with `MALLOC_TOP_PAD_=67108864`; runevents does not change malloc in processes it does not own.

CPython's full garbage collections walk every object in the process: the modules, classes and
functions of SQLAlchemy, aiokafka and pydantic, hundreds of thousands, each time a batch's short-lived
records have been promoted often enough to trigger one. Frozen once the process has started
(`gc.freeze`), those are never walked again: a projector's CPU per event fell from 18.6 to 13.6 µs
(bench notes in bench/README.md). Library users get the same by calling `gc.freeze()` once their
process has started.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
from typing import Final

log = logging.getLogger(__name__)

HEAP_TOP_PAD: Final = 64 * 1024 * 1024
_M_TOP_PAD: Final = -2  # glibc's malloc.h


def keep_heap_top(pad: int = HEAP_TOP_PAD) -> bool:
    """Pad the heap top by `pad` bytes where the C library is glibc; whether it was set."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False  # not glibc (musl, macOS): nothing to tune
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(_M_TOP_PAD, pad))
    log.debug("heap top pad %d bytes: %s", pad, "set" if done else "refused")
    return done


def freeze_startup_objects() -> int:
    """Keep every object alive now out of later garbage collections; how many were frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
