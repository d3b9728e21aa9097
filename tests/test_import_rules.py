"""The import rules of the tree: which packages may import which, read from the source, not from a run.

Every `import` and `from ... import` counts, also those inside functions (a lazy import is still an
arrow). The rules are a list so that the layout can change in one place.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "runevents"

# The command line and the tooling: the core never imports them.
CLI = ("runevents.cli",)
TOOLING = ("runevents.devstack",)
PROJECTOR = ("runevents.bus.projector",)
# What writers on the bus use: the store, the producer, read-your-writes, the topic and the shared names.
BUS_WRITERS = (
    "runevents.bus.store",
    "runevents.bus.store_url",
    "runevents.bus.sealer",
    "runevents.bus.fitting",
    "runevents.bus.producer",
    "runevents.bus.read_your_writes",
    "runevents.bus.topic",
    "runevents.bus.names",
)
# Old import paths kept for this version: each re-exports its new home and warns (test_shims_only_forward).
SHIMS = {
    "runevents.store.sql": "runevents.tables.sql",
    "runevents.store.bus": "runevents.bus.store",
    "runevents.topic": "runevents.bus.topic",
    "runevents.producer": "runevents.bus.producer",
    "runevents.consumer": "runevents.bus.projector",
}

# (modules the rule is about, what they must not import, why)
RULES: list[tuple[tuple[str, ...], tuple[str, ...], str]] = [
    (
        ("runevents.store",),
        ("runevents.bus", "runevents.tables", "runevents.ops", *CLI),
        "the port and the local backends import no other backend, no job and no command",
    ),
    (BUS_WRITERS, PROJECTOR, "a bus writer never imports the projector"),
    (
        ("runevents.tables",),
        ("runevents.bus", "runevents.ops", *CLI),
        "the read tables know nothing of the bus",
    ),
    (
        ("runevents.events",),
        ("runevents.store", "runevents.tables", "runevents.bus", "runevents.ops", *CLI),
        "the event model is the bottom layer",
    ),
    (("runevents.metrics",), PROJECTOR, "metrics read the projector through a Protocol, not a cycle"),
    (
        ("runevents.bus.names",),
        ("runevents.store", "runevents.tables", "runevents.bus", "runevents.ops", *CLI),
        "shared names depend on nothing",
    ),
]


# What each part of the tree may import besides itself: the table in the README's architecture section.
_BASE = ("runevents.errors", "runevents.masking", "runevents.names")
_CORE = (
    *_BASE,
    "runevents.events",
    "runevents.lifecycle",
    "runevents.crypto",
    "runevents.store",
    "runevents.tables",
    "runevents.bus",
)
LAYERS: dict[str, tuple[str, ...]] = {
    "runevents.errors": (),
    "runevents.masking": (),
    "runevents.heap": (),
    "runevents.metrics": (),
    "runevents.names": ("runevents.errors",),
    "runevents.events": ("runevents.errors",),
    # Retention policies and what they expire: data rules, beside the events.
    "runevents.lifecycle": (*_BASE, "runevents.events"),
    # Envelope encryption: keyrings and sealed records, beside the events.
    "runevents.crypto": (*_BASE, "runevents.events"),
    "runevents.store": (*_BASE, "runevents.events", "runevents.lifecycle"),
    "runevents.tables": (
        *_BASE,
        "runevents.events",
        "runevents.lifecycle",
        "runevents.crypto",
        "runevents.store",
    ),
    "runevents.retrying": ("runevents.masking", "runevents.tables"),
    "runevents.bus": (*_CORE, "runevents.retrying", "runevents.metrics"),
    "runevents.settings": (
        *_BASE,
        "runevents.lifecycle",
        "runevents.crypto",
        "runevents.tables",
        "runevents.bus",
    ),
    "runevents.ops": (*_CORE, "runevents.retrying", "runevents.metrics"),
    # The HTTP service reads through the contract only: any store, no backend of its own.
    "runevents.serve": (*_BASE, "runevents.events", "runevents.store"),
    # The deer-flow drop-in builds any backend from deer-flow's configuration, settings included.
    "runevents.deerflow": (*_CORE, "runevents.settings"),
    # Token usage off the topic: its own consumer group, the projector's offset rule, its own tables.
    "runevents.usage": (*_CORE, "runevents.retrying", "runevents.metrics"),
    "runevents.devstack": (*_CORE, "runevents.heap"),
    "runevents.cli": ("runevents",),
}


def module_name(path: Path) -> str:
    """`runevents/store/sql.py` as `runevents.store.sql` (a package as its own name)."""
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def imports_of(path: Path) -> frozenset[str]:
    """Every runevents module `path` imports, at any depth of its code."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return frozenset(name for name in found if name.startswith("runevents"))


def within(name: str, packages: tuple[str, ...]) -> bool:
    """Whether module `name` is one of `packages` or inside one."""
    return any(name == package or name.startswith(package + ".") for package in packages)


MODULES = {
    module_name(path): path
    for path in sorted(ROOT.rglob("*.py"))
    if "migrations" not in path.parts and module_name(path) not in SHIMS
}
SHIM_PATHS = {module_name(path): path for path in ROOT.rglob("*.py") if module_name(path) in SHIMS}


@pytest.mark.parametrize(("subjects", "forbidden", "why"), RULES, ids=[rule[2] for rule in RULES])
def test_each_rule_holds(subjects: tuple[str, ...], forbidden: tuple[str, ...], why: str):
    broken = sorted(
        f"{name} imports {imported}"
        for name, path in MODULES.items()
        if within(name, subjects)
        for imported in imports_of(path)
        if within(imported, forbidden)
    )
    assert not broken, f"{why}: " + "; ".join(broken)


def test_the_core_imports_neither_the_command_line_nor_the_tooling():
    broken = sorted(
        f"{name} imports {imported}"
        for name, path in MODULES.items()
        if not within(name, (*CLI, *TOOLING))
        for imported in imports_of(path)
        if within(imported, (*CLI, *TOOLING))
    )
    assert not broken, "; ".join(broken)


def test_the_rules_name_modules_that_exist():
    # A rule about a module that was moved away would pass for ever: every name must still be there.
    named = {
        *CLI,
        *TOOLING,
        *PROJECTOR,
        *BUS_WRITERS,
        *SHIMS.values(),
        *(name for rule in RULES for name in (*rule[0], *rule[1])),
    }
    missing = sorted(name for name in named if not any(within(module, (name,)) for module in MODULES))
    assert not missing, missing


def test_a_broken_rule_is_found(tmp_path: Path):
    source = tmp_path / "example.py"
    source.write_text("def later():\n    from runevents.bus.projector.loop import Projector\n")
    assert within("runevents.bus.projector.loop", PROJECTOR)
    assert "runevents.bus.projector.loop" in imports_of(source)


@pytest.mark.parametrize("old", sorted(SHIMS))
def test_shims_only_forward(old: str):
    # A shim that grew code of its own would be a second copy; it holds a docstring, one import of its
    # new home, __all__ and the warning, nothing else.
    path = SHIM_PATHS[old]
    imported = {name for name in imports_of(path) if name != "runevents"}
    assert imported <= {SHIMS[old], *(f"{SHIMS[old]}.{name}" for name in _exported(path))}, imported
    assert SHIMS[old] in imported


def _exported(path: Path) -> list[str]:
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "__all__":
            return list(ast.literal_eval(node.value))
    return []


@pytest.mark.parametrize("old", sorted(SHIMS))
def test_an_old_path_still_imports_and_says_where_it_went(old: str):
    # A fresh interpreter: the warning is given once, on the first import of the old path.
    names = _exported(SHIM_PATHS[old])
    check = (
        "import importlib, warnings\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        f"    old = importlib.import_module({old!r})\n"
        f"new = importlib.import_module({SHIMS[old]!r})\n"
        f"assert all(getattr(old, name) is getattr(new, name) for name in {names!r})\n"
        "print(*(str(w.message) for w in caught if w.category is DeprecationWarning))\n"
    )
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"{old} moved to {SHIMS[old]}" in done.stdout


def part_of(name: str) -> str | None:
    """The part of LAYERS that module `name` belongs to (the longest that holds it)."""
    holding = [part for part in LAYERS if within(name, (part,))]
    return max(holding, key=len) if holding else None


def test_every_module_belongs_to_a_part():
    assert not sorted(name for name in MODULES if name != "runevents" and part_of(name) is None)


def test_each_part_imports_only_what_the_layers_allow():
    broken = sorted(
        f"{name} imports {imported}"
        for name, path in MODULES.items()
        if (part := part_of(name)) is not None
        for imported in imports_of(path)
        if imported != "runevents" and not within(imported, (part, *LAYERS[part]))
    )
    assert not broken, "; ".join(broken)
