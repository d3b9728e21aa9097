"""Stateful test: random sequences of writes, deletes, reopens and reads against a reference model.

Every backend in `tests.backends.registry` runs the same machine; each answer of the store must
equal the naive model's (`reference_model.py`), full records included.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, ClassVar, TypeVar, cast

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tests.backends.registry import BACKENDS
from tests.conformance.reference_model import ReferenceModel, same

T = TypeVar("T")

THREAD_IDS = ("t1", "t2", "t3")
RUN_IDS = ("r1", "r2", "r3")
EVENT_TYPES = ("llm.ai.response", "ai_message", "llm.human.input", "run.start", "run.end", "run.delivery")
CATEGORIES = ("message", "trace", "lifecycle")
MESSAGE_IDS = ("m1", "m2", "m3")
TASK_IDS = ("k1", "k2")
WRITER_USERS = (None, "u1", "u2")
READER_USERS = (None, "u1", "u2", "nobody")

# Strings JSONL has broken before (guarantee 10).
TRICKY_TEXT = ("", "hi 👋", "a\u2028b\u2029c", "line\r\nnext", "nul\x00byte", "🧪🧪", "tab\there")
TEXT = st.sampled_from(TRICKY_TEXT) | st.text(max_size=6)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT
)
# LangChain/OpenAI-style message dicts; message ids come from a small pool, so they repeat.
MESSAGE_WITH_ID = st.fixed_dictionaries(
    {"type": st.sampled_from(["ai", "human"]), "text": TEXT, "id": st.sampled_from(MESSAGE_IDS)},
    optional={"extra": SCALARS},
)
MESSAGE_WITHOUT_ID = st.fixed_dictionaries(
    {"type": st.sampled_from(["ai", "human"]), "text": TEXT}, optional={"id": st.just(7), "extra": SCALARS}
)
CONTENT_PARTS = st.lists(
    TEXT | st.fixed_dictionaries({"type": st.just("text"), "text": TEXT}) | SCALARS, max_size=3
)
GENERATED_CONTENT = st.one_of(TEXT, MESSAGE_WITH_ID, MESSAGE_WITHOUT_ID, CONTENT_PARTS)
# Ready-made contents of every kind: cheap to draw, so seeded histories can be long.
SAMPLE_CONTENT = st.sampled_from(
    [
        *TRICKY_TEXT,
        *(
            {"type": kind, "id": message_id, "text": "hi 👋"}
            for message_id in MESSAGE_IDS
            for kind in ("ai", "human")
        ),
        {"type": "ai", "text": "no id"},
        {"type": "ai", "id": 7, "text": "an id that is not a str"},
        {"type": "ai", "id": "m1", "extra": {"nested": [1, 2.5, True, None, "\u2029"]}},
        [],
        [{"type": "text", "text": "part\u2028one"}, "two"],
        [1, 1.0, True, None, "x"],
    ]
)
CONTENT = SAMPLE_CONTENT | GENERATED_CONTENT
CALLERS: tuple[dict[str, Any], ...] = ({}, {"caller": "agent"}, {"caller": "middleware:x"}, {"caller": None})
TASKS: tuple[dict[str, Any], ...] = ({}, *({"task_id": task_id} for task_id in TASK_IDS))
METADATA = st.sampled_from(
    [None, {"note": [1.5, False, "\x00"]}, *({**caller, **task} for caller in CALLERS for task in TASKS)]
)
# Messages are what most reads see; two in three events are one, so pages fill up.
CATEGORY = st.just("message") | st.sampled_from(CATEGORIES)
CREATED_AT = st.sampled_from(
    [None, None, "2024-05-01T12:00:00+02:00", "2024-05-01T10:00:00.123456+00:00", "2025-01-01T00:00:00-05:30"]
)


def events(
    event_types: st.SearchStrategy[str], content: st.SearchStrategy[Any]
) -> st.SearchStrategy[dict[str, Any]]:
    """Keyword arguments of one `put`."""
    return st.fixed_dictionaries(
        {
            "thread_id": st.sampled_from(THREAD_IDS),
            "run_id": st.sampled_from(RUN_IDS),
            "event_type": event_types,
            "category": CATEGORY,
            "content": content,
            "metadata": METADATA,
            "created_at": CREATED_AT,
            "user_id": st.sampled_from(WRITER_USERS),
        }
    )


EVENTS = events(st.sampled_from(EVENT_TYPES), CONTENT)
SEED_EVENTS = events(st.sampled_from(EVENT_TYPES), SAMPLE_CONTENT)
# Up to 100 events to start from; the length is drawn first, so a failing case shrinks it to 0.
SEED = st.integers(0, 100).flatmap(lambda size: st.lists(SEED_EVENTS, min_size=size, max_size=size))
# put_if_absent guards terminal receipts; a narrower type pool makes "already there" common.
RECEIPTS = events(st.sampled_from(["run.end", "run.delivery", "llm.ai.response"]), CONTENT)
# A valid event, and fields of which any one makes it invalid (guarantee 6).
VALID_EVENT: dict[str, Any] = {
    "thread_id": "t1",
    "run_id": "r1",
    "event_type": "run.start",
    "category": "message",
    "content": "spoiled",
}
BAD_FIELDS = st.sampled_from(
    [
        {"run_id": ""},
        {"thread_id": "t" * 65},
        {"event_type": "e" * 33},
        {"category": "c" * 17},
        {"created_at": "2024-05-01T12:00:00"},
        {"created_at": "yesterday"},
        {"content": 5},
        {"content": "lone \ud800 surrogate"},
        {"metadata": ["not", "a", "dict"]},
    ]
)

THREAD = st.sampled_from(THREAD_IDS)
RUN = st.sampled_from((*RUN_IDS, "r-unknown"))
LIMIT = st.integers(0, 6)
# Small pages when paging through, so a thread spans several of them.
PAGE_LIMIT = st.integers(1, 4)
SEQ = st.none() | st.integers(0, 25)
READER = st.sampled_from(READER_USERS)
EVENT_TYPE_FILTER = st.none() | st.lists(st.sampled_from(EVENT_TYPES), unique=True, max_size=4)
TASK = st.none() | st.sampled_from(TASK_IDS)
RUN_SETS = st.lists(RUN, unique=True, max_size=4)
IDENTITIES = st.lists(st.sampled_from((*MESSAGE_IDS, "m-unknown")), unique=True, max_size=4)

EVERYTHING = 10_000


class StoreMachine(RuleBasedStateMachine):
    """One store of one backend, driven side by side with the reference model."""

    backend_name: ClassVar[str]
    request: ClassVar[pytest.FixtureRequest]

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.directory = Path(tempfile.mkdtemp(prefix="runevents-stateful-"))
        self.backend = BACKENDS[self.backend_name](self.directory / "store", self.request)
        self.store = self.backend.open()
        self.model = ReferenceModel()

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(work)

    def teardown(self) -> None:
        try:
            self.run(self.store.close())
            self.run(self.loop.shutdown_default_executor())
            self.backend.shutdown()
        finally:
            self.loop.close()
            shutil.rmtree(self.directory, ignore_errors=True)

    # --- writes -------------------------------------------------------------------------------

    @initialize(batch=SEED)
    def seed(self, batch: list[dict[str, Any]]) -> None:
        """Start from a few threads' worth of records, so reads page through more than one or two."""
        self.put_batch(batch)

    @rule(event=EVENTS)
    def put(self, event: dict[str, Any]) -> None:
        record = self.run(self.store.put(**event))
        self.model.accept(event, record)

    @rule(batch=st.lists(EVENTS, max_size=5))
    def put_batch(self, batch: list[dict[str, Any]]) -> None:
        records = self.run(self.store.put_batch(batch))
        assert len(records) == len(batch)
        for event, record in zip(batch, records, strict=True):
            self.model.accept(event, record)

    @rule(batch=st.lists(EVENTS, max_size=4), bad=BAD_FIELDS, position=st.integers(0, 4))
    def put_batch_with_a_bad_event(
        self, batch: list[dict[str, Any]], bad: dict[str, Any], position: int
    ) -> None:
        spoiled = [*batch]
        spoiled.insert(min(position, len(batch)), {**VALID_EVENT, **bad})
        with pytest.raises(ValueError, match=next(iter(bad))):
            self.run(self.store.put_batch(spoiled))
        # Nothing of the batch was written: the model is unchanged and later reads must agree.

    @rule(event=RECEIPTS)
    def put_if_absent(self, event: dict[str, Any]) -> None:
        existing = self.model.existing(event["thread_id"], event["run_id"], event["event_type"])
        record, created = self.run(self.store.put_if_absent(**event))
        if existing is None:
            assert created
            self.model.accept(event, record)
        else:
            assert not created
            same(record, existing)

    @rule(thread_id=THREAD, run_id=RUN)
    def delete_by_run(self, thread_id: str, run_id: str) -> None:
        removed = self.run(self.store.delete_by_run(thread_id, run_id))
        assert removed == self.model.delete_by_run(thread_id, run_id)

    @rule(thread_id=THREAD)
    def delete_by_thread(self, thread_id: str) -> None:
        removed = self.run(self.store.delete_by_thread(thread_id))
        assert removed == self.model.delete_by_thread(thread_id)

    @precondition(lambda self: self.backend.persistent)
    @rule()
    def reopen(self) -> None:
        self.run(self.store.close())
        self.store = self.backend.open()

    # --- reads --------------------------------------------------------------------------------

    @rule(thread_id=THREAD, limit=LIMIT, before_seq=SEQ, after_seq=SEQ, user_id=READER)
    def list_messages(
        self, thread_id: str, limit: int, before_seq: int | None, after_seq: int | None, user_id: str | None
    ) -> None:
        page: dict[str, Any] = {
            "limit": limit,
            "before_seq": before_seq,
            "after_seq": after_seq,
            "user_id": user_id,
        }
        same(
            self.run(self.store.list_messages(thread_id, **page)), self.model.list_messages(thread_id, **page)
        )

    @rule(thread_id=THREAD, run_id=RUN, limit=LIMIT, before_seq=SEQ, after_seq=SEQ, user_id=READER)
    def list_messages_by_run(
        self,
        thread_id: str,
        run_id: str,
        limit: int,
        before_seq: int | None,
        after_seq: int | None,
        user_id: str | None,
    ) -> None:
        page: dict[str, Any] = {
            "limit": limit,
            "before_seq": before_seq,
            "after_seq": after_seq,
            "user_id": user_id,
        }
        same(
            self.run(self.store.list_messages_by_run(thread_id, run_id, **page)),
            self.model.list_messages_by_run(thread_id, run_id, **page),
        )

    @rule(
        thread_id=THREAD,
        run_id=RUN,
        event_types=EVENT_TYPE_FILTER,
        task_id=TASK,
        after_seq=SEQ,
        limit=LIMIT,
        user_id=READER,
    )
    def list_events(
        self,
        thread_id: str,
        run_id: str,
        event_types: list[str] | None,
        task_id: str | None,
        after_seq: int | None,
        limit: int,
        user_id: str | None,
    ) -> None:
        query: dict[str, Any] = {
            "event_types": event_types,
            "task_id": task_id,
            "after_seq": after_seq,
            "limit": limit,
            "user_id": user_id,
        }
        same(
            self.run(self.store.list_events(thread_id, run_id, **query)),
            self.model.list_events(thread_id, run_id, **query),
        )

    @rule(thread_id=THREAD, run_id=st.none() | RUN, limit=PAGE_LIMIT, upper=SEQ, user_id=st.none() | READER)
    def page_through_messages(
        self, thread_id: str, run_id: str | None, limit: int, upper: int | None, user_id: str | None
    ) -> None:
        """Page forwards from the start (below `upper`, if given) and backwards from the end.

        Each page's cursor is a seq the store returned, so every boundary lands on a record.
        The loops end because each page must equal the model's, whose cursors always move on.
        """

        def page(before_seq: int | None, after_seq: int | None) -> list[dict[str, Any]]:
            window: dict[str, Any] = {
                "limit": limit,
                "before_seq": before_seq,
                "after_seq": after_seq,
                "user_id": user_id,
            }
            if run_id is None:
                actual = self.run(self.store.list_messages(thread_id, **window))
                expected = self.model.list_messages(thread_id, **window)
            else:
                actual = self.run(self.store.list_messages_by_run(thread_id, run_id, **window))
                expected = self.model.list_messages_by_run(thread_id, run_id, **window)
            same(actual, expected)
            return actual

        after = 0
        while chunk := page(upper, after):
            after = chunk[-1]["seq"]
        before = None
        while chunk := page(before, None):
            before = chunk[0]["seq"]

    @rule(
        thread_id=THREAD,
        run_id=RUN,
        event_types=EVENT_TYPE_FILTER,
        task_id=TASK,
        limit=PAGE_LIMIT,
        user_id=READER,
    )
    def page_through_events(
        self,
        thread_id: str,
        run_id: str,
        event_types: list[str] | None,
        task_id: str | None,
        limit: int,
        user_id: str | None,
    ) -> None:
        """Read a run's records page by page, each page after the last seq of the one before."""
        after: int | None = None
        while True:
            query: dict[str, Any] = {
                "event_types": event_types,
                "task_id": task_id,
                "after_seq": after,
                "limit": limit,
                "user_id": user_id,
            }
            chunk = self.run(self.store.list_events(thread_id, run_id, **query))
            same(chunk, self.model.list_events(thread_id, run_id, **query))
            if not chunk:
                break
            after = chunk[-1]["seq"]

    @rule(thread_id=THREAD, run_ids=RUN_SETS, user_id=READER)
    def get_last_visible_ai_seq_by_run(self, thread_id: str, run_ids: list[str], user_id: str | None) -> None:
        same(
            self.run(self.store.get_last_visible_ai_seq_by_run(thread_id, run_ids, user_id=user_id)),
            self.model.get_last_visible_ai_seq_by_run(thread_id, run_ids, user_id=user_id),
        )

    @rule(thread_id=THREAD, identities=IDENTITIES, user_id=READER)
    def get_message_seqs(self, thread_id: str, identities: list[str], user_id: str | None) -> None:
        same(
            self.run(self.store.get_message_seqs(thread_id, identities, user_id=user_id)),
            self.model.get_message_seqs(thread_id, identities, user_id=user_id),
        )

    @rule(thread_id=THREAD, user_id=READER)
    def count_messages(self, thread_id: str, user_id: str | None) -> None:
        same(
            self.run(self.store.count_messages(thread_id, user_id=user_id)),
            self.model.count_messages(thread_id, user_id=user_id),
        )

    @rule(thread_id=THREAD)
    def audit_thread(self, thread_id: str) -> None:
        """Everything the thread holds, and every per-thread answer for every reader, at once."""
        page: dict[str, Any] = {"limit": EVERYTHING, "before_seq": None, "after_seq": None, "user_id": None}
        same(
            self.run(self.store.list_messages(thread_id, **page)), self.model.list_messages(thread_id, **page)
        )
        query: dict[str, Any] = {
            "event_types": None,
            "task_id": None,
            "after_seq": None,
            "limit": EVERYTHING,
            "user_id": None,
        }
        for run_id in RUN_IDS:
            same(
                self.run(self.store.list_events(thread_id, run_id, **query)),
                self.model.list_events(thread_id, run_id, **query),
            )
        identities = [*MESSAGE_IDS, "m-unknown"]
        run_ids = [*RUN_IDS, "r-unknown"]
        for user_id in READER_USERS:
            self.count_messages(thread_id, user_id)
            self.get_message_seqs(thread_id, identities, user_id)
            self.get_last_visible_ai_seq_by_run(thread_id, run_ids, user_id)


# About 20 s for both backends on 2 cores. Each case draws up to 100 seed events and 60 steps, so
# generation is slow by design; a loaded CI machine must not turn that into a health-check failure.
SETTINGS = settings(
    max_examples=80,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def machine_for(backend_name: str, request: pytest.FixtureRequest) -> type[StoreMachine]:
    """A machine class of its own per backend, so a failure's printed steps name the backend."""
    name = "".join(part.capitalize() for part in backend_name.split("+")) + "StoreMachine"
    attributes = {"backend_name": backend_name, "request": request}
    return cast(type[StoreMachine], type(name, (StoreMachine,), attributes))


# Each bus case starts a projector and a producer (about a second): fewer cases keep the suite's time.
BUS_SETTINGS = settings(SETTINGS, max_examples=25)
# deer-flow's drop-in classes delegate to a backend that runs the full machine above; their cases
# check the delegation (user arguments, records on the way out), which fewer cases cover.
DEERFLOW_SETTINGS = settings(SETTINGS, max_examples=20)


def settings_for(backend_name: str) -> settings:
    """The Hypothesis settings of a backend's run."""
    if backend_name == "bus":
        return BUS_SETTINGS
    return DEERFLOW_SETTINGS if backend_name.startswith("deerflow+") else SETTINGS


# aiokafka picks broker nodes with the global `random`; Hypothesis flags any use of it while a case
# runs, though its own draws never read it (they come from its own PRNG), so the cases stay replayable.
@pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")
@pytest.mark.parametrize("backend_name", sorted(BACKENDS))
def test_store_matches_reference_model(backend_name: str, request: pytest.FixtureRequest) -> None:
    run_state_machine_as_test(machine_for(backend_name, request), settings=settings_for(backend_name))
