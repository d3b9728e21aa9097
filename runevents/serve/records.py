"""Records as the HTTP side shows them: a legacy credential dropped from metadata, and as SSE data."""

from __future__ import annotations

from typing import Any, Final

import orjson
from fastapi import Response

from runevents.events import Record

# deer-flow's run metadata once carried the caller's credential under this key; its API strips it from
# every record it returns, and so does this one (from every route and the stream, not only /events).
LEGACY_CREDENTIAL_KEY: Final = "auth_token"
# Line breaks a JSON string may hold raw that some SSE clients split lines on (Python's splitlines()
# does; the SSE grammar does not): escaped, the data stays one line for every client.
_RAW_BREAKS: Final = (("\u2028", "\\u2028"), ("\u2029", "\\u2029"), ("\x85", "\\u0085"))


def presented(record: Record) -> Record:
    """The record as a response holds it (a copy only when something is dropped)."""
    metadata = record.get("metadata")
    if isinstance(metadata, dict) and LEGACY_CREDENTIAL_KEY in metadata:
        kept = {key: value for key, value in metadata.items() if key != LEGACY_CREDENTIAL_KEY}
        return {**record, "metadata": kept}
    return record


def presented_all(records: list[Record]) -> list[Record]:
    """`presented` of each record."""
    return [presented(record) for record in records]


def json_response(value: Any) -> Response:
    """`value` as a JSON response, encoded once by orjson.

    The routes' records are the store's, already JSON values: FastAPI's validation against the response
    models and its encoder cost more than the read itself. The models stay in the OpenAPI document.
    """
    return Response(orjson.dumps(value), media_type="application/json")


def sse_json(value: Any) -> str:
    """`value` as one line of JSON for an SSE `data:` field."""
    text = orjson.dumps(value).decode()
    for raw, escaped in _RAW_BREAKS:
        if raw in text:
            text = text.replace(raw, escaped)
    return text
