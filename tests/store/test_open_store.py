"""`open_store`: one clear error for a URL it cannot open, never a password, never a traceback of a driver."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from runevents.errors import InvalidStoreUrlError, RunEventsError, UnsupportedDatabaseError
from runevents.names import InvalidNameError
from runevents.store import open_store
from runevents.tables.failures import ReadFailedError

PLANTED = "pl4nted-S3cret"


def kafka(database: str, query: str = "") -> str:
    """A bus URL whose read tables are `database` (percent-encoded, as the URL form requires)."""
    return f"kafka://127.0.0.1:9/run-events?database={quote(database, safe='')}{query}"


# URLs open_store refuses, each carrying the planted password somewhere.
REFUSED: list[object] = [
    pytest.param(f"postgresql://u:{PLANTED}@h/db?bogus=1", InvalidStoreUrlError, "bogus", id="pg-userinfo"),
    pytest.param(
        f"postgresql://u@h/db?password={PLANTED}&bogus=1", InvalidStoreUrlError, "bogus", id="pg-query"
    ),
    pytest.param(
        f"postgresql://u@h/db?sslpassword={PLANTED}&bogus=1",
        InvalidStoreUrlError,
        "bogus",
        id="pg-sslpassword",
    ),
    pytest.param(
        kafka(f"postgresql://u:{PLANTED}@h/db", "&bogus=1"), InvalidStoreUrlError, "bogus", id="kafka-encoded"
    ),
    pytest.param(
        kafka(f"postgresql://u@h/db?password={PLANTED}", "&bogus=1"),
        InvalidStoreUrlError,
        "bogus",
        id="kafka-encoded-query",
    ),
    pytest.param(f"mysql://u:{PLANTED}@h/db", InvalidStoreUrlError, "unknown backend", id="mysql"),
    pytest.param(
        f"postgresql+psycopg2://u:{PLANTED}@h/db",
        UnsupportedDatabaseError,
        "postgresql://",
        id="other-driver",
    ),
    pytest.param(
        kafka(f"mysql://u:{PLANTED}@h/db"),
        UnsupportedDatabaseError,
        "'mysql://' is not supported",
        id="kafka-mysql",
    ),
    pytest.param(
        f"postgresql://u:{PLANTED}@h:port/db",
        UnsupportedDatabaseError,
        "is not a database URL",
        id="bad-port",
    ),
    pytest.param(
        f"postgresql://u:{PLANTED}@h/db?max_trace_content=lots",
        InvalidStoreUrlError,
        "max_trace_content",
        id="max-trace",
    ),
    pytest.param(
        f"postgresql://u:{PLANTED}@h/db?schema=Bad-Name", InvalidNameError, "schema name", id="schema"
    ),
    pytest.param(
        kafka(f"postgresql://u:{PLANTED}@h/db", "&projection=pg_main"),
        InvalidNameError,
        "projection",
        id="proj",
    ),
    pytest.param(
        f"kafka://127.0.0.1:9/a%2Fb?database={quote(f'postgresql://u:{PLANTED}@h/db', safe='')}",
        InvalidNameError,
        "topic name",
        id="topic",
    ),
    pytest.param("jsonl:///", InvalidStoreUrlError, "root", id="jsonl-root"),
    pytest.param(
        "jsonl:///tmp/x?durability=never", InvalidStoreUrlError, "durability", id="jsonl-durability"
    ),
]


@pytest.mark.parametrize(("url", "error", "named"), REFUSED)
def test_a_url_that_cannot_be_opened_is_one_masked_error(
    url: str, error: type[Exception], named: str
) -> None:
    with pytest.raises(error) as caught:
        open_store(url)
    message = str(caught.value)
    assert isinstance(caught.value, RunEventsError)
    assert isinstance(caught.value, ValueError)
    assert named in message
    assert PLANTED not in message
    assert PLANTED not in repr(caught.value)
    assert "\n" not in message
    # No driver's error is chained under it to leak the URL in a traceback.
    cause = caught.value.__cause__
    assert cause is None or PLANTED not in str(cause)


def test_a_url_that_is_not_a_string_is_refused() -> None:
    with pytest.raises(InvalidStoreUrlError, match="str"):
        open_store(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("scheme", ["postgresql", "kafka"])
async def test_a_database_that_does_not_answer_is_a_read_failed_error(
    scheme: str, unused_tcp_port: int
) -> None:
    database = f"postgresql://u:{PLANTED}@127.0.0.1:{unused_tcp_port}/db?sslmode=disable"
    url = database if scheme == "postgresql" else kafka(database)
    async with open_store(url) as store:
        with pytest.raises(ReadFailedError) as caught:
            await store.list_messages("t1")
    message = str(caught.value)
    assert message.startswith("the read tables' database did not answer: ")
    assert f"127.0.0.1:{unused_tcp_port}" in message  # where, as host:port, not a Python tuple
    assert "('127.0.0.1'" not in message
    assert PLANTED not in message
    assert "\n" not in message
