"""REST plumbing of the device agent and the operator CLI: one call, its JSON body, HTTP errors mapped
onto the catalog (torch-free: the operator CLI runs in the control-plane image).

A control-plane failure raises the same `splitft.errors` classes as a gRPC one, carrying the server's
own reason (FastAPI's `detail`), so callers handle REST and gRPC errors alike.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from splitft.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    ResourceExhausted,
    SplitftError,
    Unauthenticated,
    Unavailable,
)

DEFAULT_HTTP_TIMEOUT = 30.0
_DETAIL_CHARS = 500  # a server's error text is quoted, but never unboundedly


def request(client: httpx.Client, method: str, url: str, **kwargs: Any) -> httpx.Response:
    """One REST call; transport failures become Unavailable and 4xx/5xx the matching splitft error."""
    try:
        response = client.request(method, url, **kwargs)
    except httpx.TransportError as exc:
        hint = ""
        if "CERTIFICATE_VERIFY_FAILED" in str(exc):
            hint = " (its certificate is not from the CA trusted for it: see --ca)"
        raise Unavailable(
            f"control plane unreachable ({method} {url}): {type(exc).__name__}: {exc}{hint}"
        ) from None
    if response.status_code >= 400:
        raise error_from_http(response.status_code, error_detail(response), f"{method} {response.url.path}")
    return response


def response_json(response: httpx.Response) -> Any:
    """The body of a successful answer as JSON; a non-JSON body means a broken peer, not bad input."""
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise Unavailable(f"the control plane answered {response.status_code} with a non-JSON body") from None


def error_detail(response: httpx.Response) -> str:
    """The server's reason: FastAPI's {"detail": str | [validation errors]}, else the raw text."""
    try:
        detail = response.json().get("detail")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        detail = None
    if isinstance(detail, list):  # request validation errors: [{"loc": [...], "msg": "..."}]
        detail = "; ".join(_validation_item(item) for item in detail)
    if not isinstance(detail, str) or not detail:
        detail = response.text.strip() or response.reason_phrase
    return detail[:_DETAIL_CHARS]


def _validation_item(item: Any) -> str:
    if not isinstance(item, dict):
        return str(item)
    loc = ".".join(str(part) for part in item.get("loc", []) if part != "body")
    return f"{loc}: {item.get('msg', '')}" if loc else str(item.get("msg", ""))


_BY_STATUS: dict[int, type[SplitftError]] = {
    400: InvalidArgument,
    401: Unauthenticated,
    403: PermissionDenied,
    404: NotFound,
    408: Unavailable,
    413: PayloadTooLarge,
    422: InvalidArgument,
    429: ResourceExhausted,
}


def error_from_http(status: int, detail: str, what: str = "") -> SplitftError:
    """The splitft exception for an HTTP failure status, carrying the server's detail.

    409 is both AlreadyExists and FailedPrecondition in the catalog; the server's wording decides.
    """
    if status == 409:
        cls: type[SplitftError] = AlreadyExists if "already" in detail.lower() else FailedPrecondition
    elif status >= 500:
        cls = Unavailable
    else:
        cls = _BY_STATUS.get(status, InvalidArgument if 400 <= status < 500 else SplitftError)
    prefix = f"{what} -> {status}" if what else f"HTTP {status}"
    return cls(f"{prefix}: {detail}")
