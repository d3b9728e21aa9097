"""What the benchmarks report about the machine they ran on."""

from __future__ import annotations

import os


def load() -> str:
    """The 1, 5 and 15 minute load averages."""
    return " ".join(f"{value:.2f}" for value in os.getloadavg())
