"""Retention policies: their text and JSON forms, their errors, and which events they expire."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runevents.lifecycle.retention import (
    KEEP_ALL,
    InvalidRetentionPolicyError,
    RetentionPolicy,
    Rule,
    Summary,
    expired_seqs,
    parse_policy,
    policy_from_document,
)

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def test_the_text_form_reads_back_to_the_same_policy() -> None:
    policy = parse_policy("max_age=90d; trace: max_age=7d keep_runs=20; message: forever")
    assert policy == RetentionPolicy(
        Rule(max_age=timedelta(days=90)),
        {"trace": Rule(max_age=timedelta(days=7), keep_runs=20), "message": KEEP_ALL},
    )
    assert policy.text() == "max_age=90d; message: forever; trace: max_age=1w keep_runs=20"
    assert parse_policy(policy.text()) == policy
    assert policy_from_document(policy.document()) == policy
    assert policy.document() == {
        "max_age_s": 90 * 86400,
        "categories": {"message": {}, "trace": {"max_age_s": 7 * 86400, "keep_runs": 20}},
    }


def test_a_policy_without_a_default_rule_keeps_the_other_categories() -> None:
    policy = parse_policy("trace: keep_events=10")
    assert policy.rule == KEEP_ALL
    assert policy.rule_for("trace") == Rule(keep_events=10)
    assert parse_policy("forever").keeps_everything
    assert parse_policy("").keeps_everything


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("keep_events=0", "the default rule: keep_events must be a whole number, at least 1, got 0"),
        ("max_age=7x", "the default rule: max_age='7x' is not a duration"),
        ("max_age=-1d", "the default rule: max_age='-1d' is not a duration"),
        ("ttl=7d", "the default rule: 'ttl=7d' is not a limit"),
        ("keep_runs=2 keep_runs=3", "the default rule: keep_runs is given twice"),
        ("keep_runs=two", "the default rule: keep_runs='two' is not a whole number"),
        ("max_age=1d; trace max_age=7d", "'trace max_age=7d': a clause after the first names its category"),
        ("trace: max_age=7d; trace: forever", "category 'trace' has two rules"),
        ("trace: forever sometimes", "category 'trace': 'forever' is not a limit"),
        ("max_age=1d; x" + "y" * 16 + ": forever", "a category name must be 1 to 16 characters"),
    ],
)
def test_a_bad_policy_names_the_clause_and_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(InvalidRetentionPolicyError, match="^" + re.escape(says)):
        parse_policy(text)


@pytest.mark.parametrize(
    ("document", "says"),
    [
        ([], "the policy must be an object"),
        ({"max_age": 10}, "the policy has unknown fields: max_age"),
        ({"max_age_s": 0}, "the policy: max_age_s must be whole seconds"),
        ({"keep_runs": True}, "the policy: keep_runs must be a whole number"),
        ({"categories": []}, "the policy's categories must be an object"),
        ({"categories": {"trace": {"keep_events": -1}}}, "category 'trace': keep_events must be"),
        ({"categories": {"trace": {"categories": {}}}}, "category 'trace' has unknown fields"),
    ],
)
def test_a_bad_policy_document_says_what_is_wrong(document: object, says: str) -> None:
    with pytest.raises(InvalidRetentionPolicyError, match="^" + re.escape(says)):
        policy_from_document(document)


def _events(*specs: tuple[str, str, float]) -> list[Summary]:
    """(run, category, age in days) each, seqs 1.. in order."""
    return [
        Summary(seq, run_id, category, NOW - timedelta(days=age))
        for seq, (run_id, category, age) in enumerate(specs, start=1)
    ]


def test_each_category_expires_by_its_own_rule_and_the_rest_by_the_default() -> None:
    events = _events(
        ("r1", "message", 40), ("r1", "trace", 40), ("r1", "lifecycle", 40),
        ("r2", "message", 5), ("r2", "trace", 5), ("r2", "lifecycle", 5),
        ("r3", "trace", 1),
    )  # fmt: skip
    policy = parse_policy("max_age=30d; trace: max_age=3d; message: forever")
    # trace: older than 3 days (2, 5); lifecycle by the default 30 days (3); messages never.
    assert expired_seqs(events, policy, NOW) == [2, 3, 5]


def test_keep_events_counts_the_newest_events_its_rule_covers() -> None:
    events = _events(*[("r1", "trace" if n % 2 else "message", 0) for n in range(10)])
    # Traces are seqs 2, 4, 6, 8, 10: the newest three stay.
    assert expired_seqs(events, parse_policy("trace: keep_events=3"), NOW) == [2, 4]
    # The default rule covers both categories together: the newest four of all stay.
    assert expired_seqs(events, parse_policy("keep_events=4"), NOW) == [1, 2, 3, 4, 5, 6]


def test_keep_runs_keeps_the_threads_newest_runs_however_their_events_interleave() -> None:
    # r1 has the newest event (7), so it is the newest run although it began first.
    events = _events(("r1", "m", 0), ("r2", "m", 0), ("r3", "m", 0), ("r2", "m", 0), ("r3", "m", 0),
                     ("r4", "m", 0), ("r1", "m", 0))  # fmt: skip
    assert expired_seqs(events, parse_policy("keep_runs=2"), NOW) == [2, 3, 4, 5]


def test_nothing_expires_under_a_policy_that_keeps_everything() -> None:
    events = _events(("r1", "trace", 10_000), ("r2", "trace", 0))
    assert expired_seqs(events, parse_policy("forever; trace: forever"), NOW) == []
    assert expired_seqs([], parse_policy("keep_events=1"), NOW) == []


_RULES = st.builds(
    Rule,
    max_age=st.none() | st.integers(1, 10).map(lambda days: timedelta(days=days)),
    keep_events=st.none() | st.integers(1, 8),
    keep_runs=st.none() | st.integers(1, 4),
)
_CATEGORIES = ["message", "trace", "lifecycle"]


@settings(max_examples=300, deadline=None)
@given(
    specs=st.lists(
        st.tuples(
            st.sampled_from(["r1", "r2", "r3", "r4"]), st.sampled_from(_CATEGORIES), st.integers(0, 12)
        ),
        max_size=25,
    ),
    default=_RULES,
    own=st.dictionaries(st.sampled_from(_CATEGORIES), _RULES, max_size=2),
)
def test_expiry_agrees_with_the_rules_read_one_event_at_a_time(
    specs: list[tuple[str, str, int]], default: Rule, own: dict[str, Rule]
) -> None:
    events = _events(*specs)
    policy = RetentionPolicy(default, own)
    newest = {event.run_id: event.seq for event in events}
    runs = sorted(newest, key=lambda run: -newest[run])

    def scope(event: Summary) -> str | None:
        return event.category if event.category in own else None

    def expires(event: Summary) -> bool:
        rule = own.get(event.category, default)
        newer = [other for other in events if scope(other) == scope(event) and other.seq > event.seq]
        return (
            (rule.max_age is not None and NOW - event.created_at > rule.max_age)
            or (rule.keep_events is not None and len(newer) >= rule.keep_events)
            or (rule.keep_runs is not None and runs.index(event.run_id) >= rule.keep_runs)
        )

    assert expired_seqs(events, policy, NOW) == [event.seq for event in events if expires(event)]
