"""422 answers that name the parameter, in FastAPI's shape, whether FastAPI or the store found the slip."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Final

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from runevents.errors import InvalidQueryError

# The store's names for arguments whose request parameter is named otherwise.
_PARAMETERS: Final = {"identities": "ids"}


def location_of(argument: str, path_parameters: Collection[str]) -> tuple[str, str]:
    """(`path` or `query`, parameter name) of a store argument, `event_types[2]` as `event_types`."""
    base = argument.split("[", 1)[0]
    name = _PARAMETERS.get(base, base)
    # run_id is a path segment of the run routes and a query parameter of the stream.
    return ("path" if name in path_parameters else "query", name)


def invalid(where: str, name: str, message: str, kind: str = "invalid") -> RequestValidationError:
    """A 422 naming one parameter, answered as FastAPI answers its own validation errors."""
    return RequestValidationError([{"type": kind, "loc": (where, name), "msg": message}])


async def invalid_query(request: Request, error: Exception) -> JSONResponse:
    """The 422 for a store's `InvalidQueryError`: the parameter it came from and what is wrong with it."""
    assert isinstance(error, InvalidQueryError)  # registered for that class only
    where, name = location_of(error.argument, request.path_params)
    detail: list[dict[str, Any]] = [
        {"type": "invalid_query", "loc": [where, name], "msg": f"{error.argument}: {error.problem}"}
    ]
    return JSONResponse({"detail": detail}, status_code=422)
