"""The `RUNEVENTS_*` variables of a process that are no setting: misspellings, named in a warning.

A misspelled key in the config file is an error (see runevents.settings); a misspelled variable would
otherwise be ignored in silence, and the default used instead of what the operator meant.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from typing import Final

from runevents.settings import CONFIG_ENV, ENV_PREFIX, Settings

# RUNEVENTS_* variables that are not settings: the config file's, one command's option's (`usage run
# --group`), the test suite's and the benchmarks'.
NOT_SETTINGS: Final = frozenset(
    {CONFIG_ENV, "RUNEVENTS_USAGE_GROUP", "RUNEVENTS_FAULT_SEED", "RUNEVENTS_WRITE_QUERY_PLANS"}
)
# RUNEVENTS_DEERFLOW_*: the deer-flow drop-in's, read (and checked) where deer-flow builds its store.
NOT_SETTINGS_PREFIXES: Final = ("RUNEVENTS_TEST_", "RUNEVENTS_BENCH_", "RUNEVENTS_DEERFLOW_")


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """A one-line warning for each `RUNEVENTS_*` variable that is no setting, naming the closest one."""
    names = [name.upper() for name in Settings.model_fields]
    known = {ENV_PREFIX + name for name in names}
    warnings = []
    for name in sorted(os.environ if environ is None else environ):
        upper = name.upper()  # the environment is read case-insensitively, as pydantic-settings does
        if not upper.startswith(ENV_PREFIX) or upper in known or upper in NOT_SETTINGS:
            continue
        if upper.startswith(NOT_SETTINGS_PREFIXES):
            continue
        # Compared without the prefix, which every name shares and would make any two look alike.
        closest = difflib.get_close_matches(upper.removeprefix(ENV_PREFIX), names, n=1, cutoff=0.6)
        hint = (
            f"did you mean {ENV_PREFIX}{closest[0]}?" if closest else "`runevents config` lists the settings"
        )
        warnings.append(f"{name} is not a runevents setting and is ignored ({hint})")
    return warnings
