"""The review console: a page for human reviewers at GET /review, with its script and style.

The three files ship in the package (service/api/console/, package data) and are served as
they are: the page carries no data, so it is public like /docs. Everything a reviewer sees
comes from the review API, which the script calls with the key the reviewer types into the
page (kept in the tab's sessionStorage, sent as `Authorization: Bearer`); in open mode
(loopback, no key active) it works without one. Nothing is loaded from another origin: the
Content-Security-Policy allows this origin's script, style and API only, no inline script or
style, no framing.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

router = APIRouter(tags=["review"])

FILES = Path(__file__).resolve().parent.parent / "console"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
       "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")  # fmt: skip
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-cache",
}


def _file(name: str, media_type: str) -> FileResponse:
    return FileResponse(FILES / name, media_type=media_type, headers=HEADERS)


@router.get("/review", include_in_schema=False)
async def page() -> FileResponse:
    return _file("index.html", "text/html; charset=utf-8")


@router.get("/review/console.js", include_in_schema=False)
async def script() -> FileResponse:
    return _file("console.js", "text/javascript; charset=utf-8")


@router.get("/review/console.css", include_in_schema=False)
async def style() -> FileResponse:
    return _file("console.css", "text/css; charset=utf-8")
