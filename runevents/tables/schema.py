"""The read tables: one schema for the sql backend and for the bus projector that writes them later.

Every unique key starts with `thread_id`, so the tables can be hash-partitioned or distributed by
thread (Citus) when one PostgreSQL is not enough.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final, cast

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from runevents.events import MAX_CATEGORY_LENGTH, MAX_EVENT_TYPE_LENGTH, MAX_ID_LENGTH

# How `run_events.content` holds a record's content: the string itself, or JSON text.
STR: Final = "str"
DICT: Final = "dict"
LIST: Final = "list"
# A string PostgreSQL text cannot hold as it is (it has NUL), kept as its JSON text instead.
JSON_STR: Final = "jstr"
CONTENT_KINDS: Final = (STR, DICT, LIST, JSON_STR)

NAMING: Final = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base of the read tables."""

    metadata = MetaData(naming_convention=NAMING)


class RunEvent(Base):
    """One event of one thread: the envelope, plus the columns the reads look up by."""

    __tablename__ = "run_events"

    thread_id: Mapped[str] = mapped_column(String(MAX_ID_LENGTH))
    seq: Mapped[int] = mapped_column(BigInteger)
    run_id: Mapped[str] = mapped_column(String(MAX_ID_LENGTH))
    event_id: Mapped[str] = mapped_column(Uuid(as_uuid=False))
    event_type: Mapped[str] = mapped_column(String(MAX_EVENT_TYPE_LENGTH))
    category: Mapped[str] = mapped_column(String(MAX_CATEGORY_LENGTH))
    content: Mapped[str] = mapped_column(Text)
    content_kind: Mapped[str] = mapped_column(String(4))
    # The metadata's exact JSON text. Not json/jsonb: PostgreSQL's JSON functions reject "\u0000"
    # anywhere in a document (guarantee 10 says NUL survives), and jsonb reorders keys. The two
    # keys the reads filter on are columns of their own instead.
    event_metadata: Mapped[str] = mapped_column("metadata", Text)
    # metadata["task_id"] when it is a string: list_events(task_id=...) filters on it.
    task_id: Mapped[str | None] = mapped_column(Text)
    # str(metadata["caller"]): get_last_visible_ai_seq_by_run skips callers starting "middleware:".
    caller: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    user_id: Mapped[str | None] = mapped_column(String(MAX_ID_LENGTH))
    # content["id"] of a message whose content is a dict: the LangChain/OpenAI message id.
    message_id: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        PrimaryKeyConstraint("thread_id", "seq"),
        UniqueConstraint("thread_id", "event_id"),
        CheckConstraint(f"content_kind IN {CONTENT_KINDS!r}", name="content_kind"),
        Index("ix_run_events_thread_id_run_id_seq", "thread_id", "run_id", "seq"),
        Index(
            "ix_run_events_messages",
            "thread_id",
            "seq",
            postgresql_where=text("category = 'message'"),
            sqlite_where=text("category = 'message'"),
        ),
        # A user's messages (scoped list_messages and count_messages) without reading anyone else's.
        Index(
            "ix_run_events_user_messages",
            "thread_id",
            "user_id",
            "seq",
            postgresql_where=text("category = 'message' AND user_id IS NOT NULL"),
            sqlite_where=text("category = 'message' AND user_id IS NOT NULL"),
        ),
        Index(
            "ix_run_events_thread_id_message_id",
            "thread_id",
            "message_id",
            "seq",
            postgresql_where=text("message_id IS NOT NULL"),
            sqlite_where=text("message_id IS NOT NULL"),
        ),
    )


class ThreadCounter(Base):
    """A thread's seq counter and counts, changed in the same transaction as its rows."""

    __tablename__ = "thread_counters"

    thread_id: Mapped[str] = mapped_column(String(MAX_ID_LENGTH), primary_key=True)
    last_seq: Mapped[int] = mapped_column(BigInteger)
    event_count: Mapped[int] = mapped_column(BigInteger)
    message_count: Mapped[int] = mapped_column(BigInteger)


class ProjectionOffset(Base):
    """Where a projection stands in one partition: the next offset to apply, moved with the rows."""

    __tablename__ = "projection_offsets"

    projection: Mapped[str] = mapped_column(String(MAX_ID_LENGTH), primary_key=True)
    # 249 characters: Kafka's limit on a topic name.
    topic: Mapped[str] = mapped_column(String(249), primary_key=True)
    partition: Mapped[int] = mapped_column(Integer, primary_key=True)
    next_offset: Mapped[int] = mapped_column(BigInteger)


class OpResult(Base):
    """The outcome of a delete or put_if_absent op, kept for the writer waiting on it."""

    __tablename__ = "op_results"

    thread_id: Mapped[str] = mapped_column(String(MAX_ID_LENGTH), primary_key=True)
    event_id: Mapped[str] = mapped_column(Uuid(as_uuid=False), primary_key=True)
    op: Mapped[str] = mapped_column(String(16))
    # Deletes: how many events went. put_if_absent: the seq of the record found or created.
    removed: Mapped[int | None] = mapped_column(BigInteger)
    seq: Mapped[int | None] = mapped_column(BigInteger)
    created: Mapped[bool | None] = mapped_column(Boolean)
    applied_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class DeletedEvent(Base):
    """A record a bus delete removed, kept a while: a writer that raced the delete still learns its seq,
    and a late duplicate of its event id is still recognized."""

    __tablename__ = "deleted_events"

    thread_id: Mapped[str] = mapped_column(String(MAX_ID_LENGTH), primary_key=True)
    event_id: Mapped[str] = mapped_column(Uuid(as_uuid=False), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    deleted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class RetentionPolicyRow(Base):
    """A thread's own retention policy (runevents.lifecycle.retention), overriding the default one."""

    __tablename__ = "retention_policies"

    thread_id: Mapped[str] = mapped_column(String(MAX_ID_LENGTH), primary_key=True)
    # The policy's JSON document (`RetentionPolicy.document`).
    policy: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Blob(Base):
    """A large content kept whole outside its event (runevents.lifecycle.blobs), by its sha256."""

    __tablename__ = "blobs"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    media_type: Mapped[str] = mapped_column(String(255))
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=text("CURRENT_TIMESTAMP")
    )


class ThreadKey(Base):
    """A thread's data key (runevents.crypto), wrapped by a KEK; destroyed (wrapped gone) when erased.

    A destroyed key's row stays: a record sealed with it is then known to be erased, not a key missing
    from the wrong database. At most one live key a thread.
    """

    __tablename__ = "thread_keys"

    key_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    thread_id: Mapped[str] = mapped_column(String(MAX_ID_LENGTH))
    kek_id: Mapped[str] = mapped_column(String(64))
    wrapped: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    destroyed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index("ix_thread_keys_thread_id", "thread_id"),
        Index(
            "uq_thread_keys_live",
            "thread_id",
            unique=True,
            postgresql_where=text("destroyed_at IS NULL"),
            sqlite_where=text("destroyed_at IS NULL"),
        ),
    )


class DeadLetter(Base):
    """A topic record the projector could not apply, kept with the reason; the partition moved on."""

    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    projection: Mapped[str] = mapped_column(String(MAX_ID_LENGTH))
    topic: Mapped[str] = mapped_column(String(249))
    partition: Mapped[int] = mapped_column(Integer)
    offset: Mapped[int] = mapped_column(BigInteger)
    key: Mapped[bytes | None] = mapped_column(LargeBinary)
    value: Mapped[bytes | None] = mapped_column(LargeBinary)
    # The record's headers as a JSON list of [name, value] with values as text (invalid UTF-8 replaced).
    headers: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    # open, retried or dropped: what the operator did about it.
    status: Mapped[str] = mapped_column(String(16), server_default="open")
    dead_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # When it was retried or dropped, and how: where it was re-published, or the operator's note.
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    resolution: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        # A partition replayed into the same projection does not add its dead letters twice.
        UniqueConstraint("projection", "topic", "partition", "offset"),
    )


class TokenUsageCall(Base):
    """One model call (an `llm.ai.response` record) as the usage consumer read it off the topic."""

    __tablename__ = "token_usage_calls"

    thread_id: Mapped[str] = mapped_column(String(MAX_ID_LENGTH), primary_key=True)
    event_id: Mapped[str] = mapped_column(Uuid(as_uuid=False), primary_key=True)
    run_id: Mapped[str] = mapped_column(String(MAX_ID_LENGTH))
    user_id: Mapped[str | None] = mapped_column(String(MAX_ID_LENGTH))
    event_type: Mapped[str] = mapped_column(String(MAX_EVENT_TYPE_LENGTH))
    # Where the record sits on the topic (the stream has no seq; the projection assigns it).
    partition: Mapped[int] = mapped_column(Integer)
    offset: Mapped[int] = mapped_column(BigInteger)
    model: Mapped[str | None] = mapped_column(Text)
    caller: Mapped[str | None] = mapped_column(Text)
    # NULL is a count the record did not carry (or carried as garbage), never 0.
    input_tokens: Mapped[int | None] = mapped_column(BigInteger)
    output_tokens: Mapped[int | None] = mapped_column(BigInteger)
    total_tokens: Mapped[int | None] = mapped_column(BigInteger)
    cache_read_tokens: Mapped[int | None] = mapped_column(BigInteger)
    cache_creation_tokens: Mapped[int | None] = mapped_column(BigInteger)
    reasoning_tokens: Mapped[int | None] = mapped_column(BigInteger)
    usage_known: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_token_usage_calls_thread_id_run_id", "thread_id", "run_id"),)


class TokenUsageOffset(Base):
    """Where a usage consumer group stands in one partition: the next offset, moved with the usage rows."""

    __tablename__ = "token_usage_offsets"

    # Not `group`, a reserved word. 255: room for any group id a deployment picks.
    consumer_group: Mapped[str] = mapped_column(String(255), primary_key=True)
    topic: Mapped[str] = mapped_column(String(249), primary_key=True)
    partition: Mapped[int] = mapped_column(Integer, primary_key=True)
    next_offset: Mapped[int] = mapped_column(BigInteger)


run_events = cast(Table, RunEvent.__table__)
thread_counters = cast(Table, ThreadCounter.__table__)
projection_offsets = cast(Table, ProjectionOffset.__table__)
op_results = cast(Table, OpResult.__table__)
dead_letters = cast(Table, DeadLetter.__table__)
deleted_events = cast(Table, DeletedEvent.__table__)
token_usage_calls = cast(Table, TokenUsageCall.__table__)
token_usage_offsets = cast(Table, TokenUsageOffset.__table__)
retention_policies = cast(Table, RetentionPolicyRow.__table__)
blobs = cast(Table, Blob.__table__)
thread_keys = cast(Table, ThreadKey.__table__)
