"""The operator dashboard at /ui: static HTML, JS and CSS shipped inside the package.

The pages hold no data and no secret: the script asks the operator for the API key, keeps it in
memory only (never in a URL, a cookie or storage) and calls the same /v1 routes with the same
`Authorization: Bearer` header as any API client. With no cookie, a cross-site request carries no
credential, so nothing here can be forged (no CSRF). A strict Content-Security-Policy allows only
this origin's own script and style (no inline code, no CDN), and forbids framing.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from fastapi import APIRouter, Response

from splitft.errors import NotFound

UI_DIR = Path(__file__).resolve().parent.parent / "ui"
ASSETS = {
    "app.js": "text/javascript; charset=utf-8",
    "chart.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

router = APIRouter(tags=["dashboard"], include_in_schema=False)


@cache
def _asset(name: str) -> bytes:
    return (UI_DIR / name).read_bytes()


@router.get("/ui")
def dashboard() -> Response:
    """The dashboard page (anyone: it holds nothing; the data needs the operator key)."""
    return Response(_asset("index.html"), media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS)


@router.get("/ui/{name}")
def dashboard_asset(name: str) -> Response:
    """The dashboard's script and style sheet; 404 for any other name (no path is ever opened from it)."""
    if name not in ASSETS:
        raise NotFound(f"no dashboard file {name!r}")
    return Response(_asset(name), media_type=ASSETS[name], headers=SECURITY_HEADERS)
