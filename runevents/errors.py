"""The exception family every runevents component raises."""

from __future__ import annotations


class RunEventsError(Exception):
    """Base of every error runevents raises on purpose."""


class InvalidEventError(RunEventsError, ValueError):
    """An event failed validation; nothing of the call that carried it was written."""

    def __init__(self, field: str, problem: str, *, index: int | None = None) -> None:
        self.field = field
        self.problem = problem
        self.index = index
        where = field if index is None else f"events[{index}].{field}"
        super().__init__(f"{where}: {problem}")


class InvalidQueryError(RunEventsError, ValueError):
    """A read was called with arguments it cannot answer (a negative limit, an unsafe id)."""

    def __init__(self, argument: str, problem: str) -> None:
        self.argument = argument
        self.problem = problem
        super().__init__(f"{argument}: {problem}")


class StoreLockedError(RunEventsError):
    """Another process holds the store's exclusive lock."""


class SchemaOutdatedError(RunEventsError):
    """The database's read tables are older (or newer) than this version of runevents needs."""


class UnsupportedDatabaseError(RunEventsError, ValueError):
    """A database URL runevents cannot use (other scheme or driver, or no URL); the message says why."""


class InvalidStoreUrlError(RunEventsError, ValueError):
    """A backend URL `open_store` cannot open as given; the message names the part and never a secret."""


class ThreadDeletedError(RunEventsError):
    """The thread a subscription followed was deleted (`delete_by_thread`); the subscription has ended."""

    def __init__(self, thread_id: str) -> None:
        self.thread_id = thread_id
        super().__init__(f"thread {thread_id!r} was deleted; its subscription ended")


class EventNotFoundError(RunEventsError, LookupError):
    """The thread holds no event of the id asked for (never written, deleted or expired)."""


class ErasureUnavailableError(RunEventsError):
    """An erasure this store cannot carry out (on the bus: it does not seal, so the topic keeps the clear)."""
