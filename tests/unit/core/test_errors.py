"""The error catalog: one code per failure class, each with its gRPC status and HTTP status."""

from __future__ import annotations

import grpc
import pytest

from splitft.errors import (
    ErrorCode,
    PayloadTooLarge,
    ResourceExhausted,
    error_from_code,
    error_from_grpc,
)
from splitft.rest import error_from_http


def test_every_grpc_status_maps_back_to_its_first_code() -> None:
    # PAYLOAD_TOO_LARGE shares RESOURCE_EXHAUSTED on gRPC; a gRPC client sees the general class.
    err = error_from_grpc(grpc.StatusCode.RESOURCE_EXHAUSTED, "edge is full")
    assert type(err) is ResourceExhausted and err.code is ErrorCode.RESOURCE_EXHAUSTED
    for code in ErrorCode:
        if code is not ErrorCode.PAYLOAD_TOO_LARGE:
            assert error_from_grpc(code.grpc_status, "x").code is code


@pytest.mark.parametrize("code", list(ErrorCode))
def test_codes_by_name_round_trip(code: ErrorCode) -> None:
    err = error_from_code(code.name, "why")
    assert err.code is code and err.message.endswith("why")


def test_payload_too_large_is_413_over_http_and_a_resource_exhausted() -> None:
    assert PayloadTooLarge("x").code.http_status == 413
    assert ResourceExhausted("x").code.http_status == 429
    err = error_from_http(413, "adapter upload exceeds 1024 bytes")
    assert isinstance(err, PayloadTooLarge) and isinstance(err, ResourceExhausted)
