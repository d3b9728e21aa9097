"""Retention policies: which of a thread's events are kept, by age, by count and per category.

A policy holds one rule for every category without a rule of its own, and rules of their own for
some categories ("traces 7 days, messages forever"). A rule keeps an event while it passes each limit
the rule sets: younger than `max_age`, among the newest `keep_events` events its rule covers in the
thread, and in one of the thread's newest `keep_runs` runs (a run is as new as its newest event). A rule
that sets no limit keeps everything.

The text form, for settings and the command line: clauses separated by `;`, the first without a name
for the default rule, then `category: ...`; each a space-separated list of `max_age=30d`,
`keep_events=1000`, `keep_runs=20`, or `forever`. Durations take s, m, h, d or w.
Example: `max_age=90d; trace: max_age=7d keep_runs=20; message: forever`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

from runevents.errors import RunEventsError
from runevents.events import MAX_CATEGORY_LENGTH

_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION: Final = re.compile(r"(\d+)([smhdw])")
_LIMITS: Final = ("max_age", "keep_events", "keep_runs")
FOREVER: Final = "forever"
_RULE_FIELDS: Final = frozenset({"max_age_s", "keep_events", "keep_runs"})


class InvalidRetentionPolicyError(RunEventsError, ValueError):
    """A retention policy that cannot be read; the message names the clause and what is wrong."""


@dataclass(frozen=True, slots=True)
class Rule:
    """The limits one rule sets; None is no limit."""

    max_age: timedelta | None = None
    keep_events: int | None = None
    keep_runs: int | None = None

    def __post_init__(self) -> None:
        if self.max_age is not None and self.max_age <= timedelta(0):
            raise InvalidRetentionPolicyError(f"max_age must be positive, got {self.max_age}")
        for name in ("keep_events", "keep_runs"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise InvalidRetentionPolicyError(f"{name} must be a whole number, at least 1, got {value!r}")

    @property
    def keeps_everything(self) -> bool:
        """Whether the rule sets no limit."""
        return self.max_age is None and self.keep_events is None and self.keep_runs is None

    def text(self) -> str:
        """The rule in the text form."""
        if self.keeps_everything:
            return FOREVER
        parts = []
        if self.max_age is not None:
            parts.append(f"max_age={_duration_text(self.max_age)}")
        if self.keep_events is not None:
            parts.append(f"keep_events={self.keep_events}")
        if self.keep_runs is not None:
            parts.append(f"keep_runs={self.keep_runs}")
        return " ".join(parts)

    def document(self) -> dict[str, int]:
        """The rule as JSON values (seconds for the age)."""
        found: dict[str, int] = {}
        if self.max_age is not None:
            found["max_age_s"] = int(self.max_age.total_seconds())
        if self.keep_events is not None:
            found["keep_events"] = self.keep_events
        if self.keep_runs is not None:
            found["keep_runs"] = self.keep_runs
        return found


KEEP_ALL: Final = Rule()


@dataclass(frozen=True)
class RetentionPolicy:
    """The rule for every category without one of its own, and the categories' own rules."""

    rule: Rule = KEEP_ALL
    categories: Mapping[str, Rule] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for category in self.categories:
            if not isinstance(category, str) or not 0 < len(category) <= MAX_CATEGORY_LENGTH:
                raise InvalidRetentionPolicyError(
                    f"a category name must be 1 to {MAX_CATEGORY_LENGTH} characters, got {category!r}"
                )

    @property
    def keeps_everything(self) -> bool:
        """Whether no rule of the policy sets a limit."""
        return self.rule.keeps_everything and all(rule.keeps_everything for rule in self.categories.values())

    def rule_for(self, category: str) -> Rule:
        """The rule an event of `category` is kept by."""
        return self.categories.get(category, self.rule)

    def text(self) -> str:
        """The policy in the text form (`parse_policy` reads it back)."""
        clauses = [self.rule.text()]
        clauses += [f"{category}: {rule.text()}" for category, rule in sorted(self.categories.items())]
        return "; ".join(clauses)

    def document(self) -> dict[str, Any]:
        """The policy as a JSON document (`policy_from_document` reads it back)."""
        found: dict[str, Any] = self.rule.document()
        if self.categories:
            found["categories"] = {name: rule.document() for name, rule in sorted(self.categories.items())}
        return found


def _duration_text(age: timedelta) -> str:
    seconds = int(age.total_seconds())
    for unit, size in sorted(_UNITS.items(), key=lambda item: -item[1]):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"  # unreachable: every whole number of seconds divides by 1


def _parse_rule(text: str, where: str) -> Rule:
    words = text.split()
    if words == [FOREVER]:
        return KEEP_ALL
    limits: dict[str, Any] = {}
    for word in words:
        name, equals, value = word.partition("=")
        if not equals or name not in _LIMITS:
            raise InvalidRetentionPolicyError(
                f"{where}: {word!r} is not a limit: say max_age=<n><s|m|h|d|w>, keep_events=<n>, "
                f"keep_runs=<n> or {FOREVER}"
            )
        if name in limits:
            raise InvalidRetentionPolicyError(f"{where}: {name} is given twice")
        if name == "max_age":
            found = _DURATION.fullmatch(value)
            if found is None:
                raise InvalidRetentionPolicyError(
                    f"{where}: max_age={value!r} is not a duration such as 30d, 12h or 90m"
                )
            limits[name] = timedelta(seconds=int(found.group(1)) * _UNITS[found.group(2)])
        else:
            if not value.isdigit():
                raise InvalidRetentionPolicyError(f"{where}: {name}={value!r} is not a whole number")
            limits[name] = int(value)
    try:
        return Rule(**limits)
    except InvalidRetentionPolicyError as exc:
        raise InvalidRetentionPolicyError(f"{where}: {exc}") from None


def parse_policy(text: str) -> RetentionPolicy:
    """Read a policy in the text form; raise `InvalidRetentionPolicyError` naming the clause at fault."""
    clauses = [clause.strip() for clause in text.split(";")]
    if not clauses[0] or ":" in clauses[0].split("=")[0]:
        # No default rule given: it keeps everything (only the named categories expire).
        clauses.insert(0, FOREVER)
    rule = _parse_rule(clauses[0], "the default rule")
    categories: dict[str, Rule] = {}
    for clause in clauses[1:]:
        if not clause:
            continue
        category, colon, rest = clause.partition(":")
        category = category.strip()
        if not colon or not category:
            raise InvalidRetentionPolicyError(
                f"{clause!r}: a clause after the first names its category, as in 'trace: max_age=7d'"
            )
        if category in categories:
            raise InvalidRetentionPolicyError(f"category {category!r} has two rules")
        categories[category] = _parse_rule(rest, f"category {category!r}")
    return RetentionPolicy(rule, categories)


def _rule_from_document(document: Any, where: str, *, fields: frozenset[str] = _RULE_FIELDS) -> Rule:
    if not isinstance(document, dict):
        raise InvalidRetentionPolicyError(f"{where} must be an object")
    unknown = set(document) - fields
    if unknown:
        raise InvalidRetentionPolicyError(f"{where} has unknown fields: {', '.join(sorted(unknown))}")
    age = document.get("max_age_s")
    if age is not None and (isinstance(age, bool) or not isinstance(age, int) or age < 1):
        raise InvalidRetentionPolicyError(f"{where}: max_age_s must be whole seconds, at least 1")
    try:
        return Rule(
            max_age=None if age is None else timedelta(seconds=age),
            keep_events=document.get("keep_events"),
            keep_runs=document.get("keep_runs"),
        )
    except InvalidRetentionPolicyError as exc:
        raise InvalidRetentionPolicyError(f"{where}: {exc}") from None


def policy_from_document(document: Any) -> RetentionPolicy:
    """Read a policy's JSON document; raise `InvalidRetentionPolicyError` naming what is wrong."""
    rule = _rule_from_document(document, "the policy", fields=_RULE_FIELDS | {"categories"})
    categories = document.get("categories", {})
    if not isinstance(categories, dict):
        raise InvalidRetentionPolicyError("the policy's categories must be an object")
    return RetentionPolicy(
        rule, {name: _rule_from_document(value, f"category {name!r}") for name, value in categories.items()}
    )


@dataclass(frozen=True, slots=True)
class Summary:
    """What expiry looks at of one stored event."""

    seq: int
    run_id: str
    category: str
    created_at: datetime


def expired_seqs(events: Iterable[Summary], policy: RetentionPolicy, now: datetime) -> list[int]:
    """The seqs of a thread's `events` that `policy` no longer keeps at `now`, in order."""
    ordered: Sequence[Summary] = sorted(events, key=lambda event: event.seq)
    if policy.keeps_everything or not ordered:
        return []
    # A run is as new as its newest event; the thread's newest runs first.
    newest_of_run: dict[str, int] = {}
    for event in ordered:
        newest_of_run[event.run_id] = event.seq
    by_recency = sorted(newest_of_run, key=newest_of_run.__getitem__, reverse=True)
    run_rank = {run_id: rank for rank, run_id in enumerate(by_recency)}
    # Events each rule covers, newest first, for keep_events: a category's own rule covers its events,
    # the default rule every category without one.
    covered_newer: dict[int, int] = {}
    seen_by_rule: dict[str | None, int] = {}
    for event in reversed(ordered):
        scope = event.category if event.category in policy.categories else None
        covered_newer[event.seq] = seen_by_rule.get(scope, 0)
        seen_by_rule[scope] = covered_newer[event.seq] + 1
    expired = []
    for event in ordered:
        rule = policy.rule_for(event.category)
        if (
            (rule.max_age is not None and event.created_at < now - rule.max_age)
            or (rule.keep_events is not None and covered_newer[event.seq] >= rule.keep_events)
            or (rule.keep_runs is not None and run_rank[event.run_id] >= rule.keep_runs)
        ):
            expired.append(event.seq)
    return expired
