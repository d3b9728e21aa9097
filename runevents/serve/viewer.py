"""The run viewer: one static page (static/: HTML, JS, CSS; no build step) that reads the API in the browser.

The page holds no data of its own, so it needs no token: it sends the one the user gives it, as an
`Authorization` header, to the `/api` routes. Everything it loads comes from this server (the
Content-Security-Policy says so to the browser), and it shows record data as text, never as markup.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

from fastapi import FastAPI
from fastapi.responses import FileResponse, Response

STATIC: Final = Path(__file__).parent / "static"

# The page's files by route: a fixed list, so no request path ever reaches the file system.
FILES: Final = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/viewer.js": ("viewer.js", "text/javascript; charset=utf-8"),
    "/sse.js": ("sse.js", "text/javascript; charset=utf-8"),
    "/viewer.css": ("viewer.css", "text/css; charset=utf-8"),
}

# Scripts, styles and requests from this server only; no inline script, no frames, no form posts.
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS: Final = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidated on each load (the ETag makes that cheap): an upgraded server's page is seen at once.
    "Cache-Control": "no-cache",
}


def mount_viewer(app: FastAPI) -> None:
    """Serve the run viewer at `/` (its scripts and style beside it), outside the OpenAPI document."""
    for route, (name, media_type) in FILES.items():
        app.add_api_route(
            route,
            _file_endpoint(STATIC / name, media_type),
            methods=["GET"],
            include_in_schema=False,
            response_class=FileResponse,
            name=f"viewer:{name}",
        )


def _file_endpoint(path: Path, media_type: str) -> Callable[[], Awaitable[Response]]:
    async def serve_file() -> Response:
        return FileResponse(path, media_type=media_type, headers=HEADERS)

    serve_file.__doc__ = f"The run viewer's {path.name}."
    return serve_file
