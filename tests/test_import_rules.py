"""The import rules of the tree: which packages may import which, read from the source, not from a run.

Every `import` and `from ... import` counts, also those inside functions (a lazy import is still an
arrow). The rules are a list so that the layout can change in one place.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "runevents"

# The command line and the tooling: the core never imports them.
CLI = (
    "runevents.cli",
    "runevents.cli_support",
    "runevents.admin_cli",
    "runevents.demo_cli",
    "runevents.promote_cli",
    "runevents.dead_letters_cli",
    "runevents.backfill_cli",
    "runevents.replay_cli",
    "runevents.environment",
)
TOOLING = ("runevents.devstack", "runevents.fleet")
PROJECTOR = ("runevents.consumer",)

# (modules the rule is about, what they must not import, why)
RULES: list[tuple[tuple[str, ...], tuple[str, ...], str]] = [
    (("runevents.store",), (*PROJECTOR, "runevents.ops", *CLI), "the store side never imports the projector"),
    (("runevents.producer",), PROJECTOR, "a bus writer never imports the projector"),
    (("runevents.metrics",), PROJECTOR, "metrics read the projector through a Protocol, not a cycle"),
    (
        ("runevents.bus",),
        (*PROJECTOR, "runevents.store", "runevents.ops", *CLI),
        "shared names depend on nothing",
    ),
]


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


MODULES = {module_name(path): path for path in sorted(ROOT.rglob("*.py")) if "migrations" not in path.parts}


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
    named = {*CLI, *TOOLING, *PROJECTOR, *(name for rule in RULES for name in (*rule[0], *rule[1]))}
    missing = sorted(name for name in named if not any(within(module, (name,)) for module in MODULES))
    assert not missing, missing


def test_a_broken_rule_is_found(tmp_path: Path):
    source = tmp_path / "example.py"
    source.write_text("def later():\n    from runevents.consumer.projector import Projector\n")
    assert within("runevents.consumer.projector", PROJECTOR)
    assert "runevents.consumer.projector" in imports_of(source)
