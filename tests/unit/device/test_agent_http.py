"""REST errors of the control plane mapped onto the splitft catalog (splitft/rest.py);
the server is an httpx.MockTransport here."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from splitft import errors
from splitft.rest import error_from_http, request
from tests.support.agent_support import CP


@pytest.mark.parametrize(
    ("status", "detail", "error"),
    [
        (400, "bad", errors.InvalidArgument),
        (401, "invalid or already used enrollment token", errors.Unauthenticated),
        (403, "not yours", errors.PermissionDenied),
        (404, "unknown session", errors.NotFound),
        (409, "device phone-17 already exists", errors.AlreadyExists),
        (409, "session is not running", errors.FailedPrecondition),
        (413, "too big", errors.PayloadTooLarge),
        (422, [{"loc": ["body", "reason"], "msg": "Field required"}], errors.InvalidArgument),
        (429, "slow down", errors.ResourceExhausted),
        (500, "boom", errors.Unavailable),
        (503, "draining", errors.Unavailable),
    ],
)
def test_http_errors_map_to_the_catalog(status: int, detail: Any, error: type[errors.SplitftError]) -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json={"detail": detail})

    with httpx.Client(transport=httpx.MockTransport(handler)) as http:
        with pytest.raises(error) as caught:
            request(http, "POST", f"{CP}/v1/sessions/s-1/fail")
    assert type(caught.value) is error
    expected = "reason: Field required" if isinstance(detail, list) else detail
    assert caught.value.message == f"POST /v1/sessions/s-1/fail -> {status}: {expected}"


def test_http_connection_failure_and_plain_text_errors() -> None:
    def refuse(req: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=req)

    with httpx.Client(transport=httpx.MockTransport(refuse)) as http:
        with pytest.raises(errors.Unavailable, match="unreachable.*ConnectError"):
            request(http, "GET", f"{CP}/v1/assignments/next")
    assert error_from_http(502, "Bad Gateway").message == "HTTP 502: Bad Gateway"
    assert type(error_from_http(418, "teapot")) is errors.InvalidArgument
