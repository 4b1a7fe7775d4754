"""The console: a web page at ``GET /console`` over the same HTTP API, served by the same process.

The page and its assets ship inside the package (``claude_sessions/http/static/``): no
CDN, no build step. The page itself holds nothing secret and needs no key; everything
it shows comes from the API with the key the operator pastes (kept in the tab's
``sessionStorage``, sent as a bearer header). A strict Content-Security-Policy lets it
run only its own script and talk only to this origin.
"""

from __future__ import annotations

from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Path, Response

from claude_sessions.http.common import ApiError, ServiceDep

router = APIRouter(include_in_schema=False)

#: The assets the page loads, by name, with their media types.
ASSETS = {
    "app.js": "text/javascript; charset=utf-8",
    "markdown.js": "text/javascript; charset=utf-8",
    "approvals.js": "text/javascript; charset=utf-8",
    "keys.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
}
#: Replaced in the page by whether the operator must sign in (keys configured) or not.
AUTH_MARKER = 'data-auth="keys"'

_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _read(name: str) -> str:
    return (resources.files("claude_sessions.http") / "static" / name).read_text(encoding="utf-8")


@router.get("/console")
async def console(service: ServiceDep) -> Response:
    """The page; a keyless server lets the operator straight in."""
    page = _read("index.html")
    if service.authenticator.is_open:
        page = page.replace(AUTH_MARKER, 'data-auth="none"')
    return Response(page, media_type="text/html; charset=utf-8", headers=_HEADERS)


@router.get("/console/{name}")
async def asset(name: Annotated[str, Path(max_length=64)]) -> Response:
    if name not in ASSETS:
        raise ApiError(404, "not_found", f"no console asset {name!r}")
    return Response(_read(name), media_type=ASSETS[name], headers=_HEADERS)
