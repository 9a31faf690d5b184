"""Reading an upload's body in the routes: bounded as it streams in, and never empty."""

from __future__ import annotations

from fastapi import Request

from splitft.errors import InvalidArgument, PayloadTooLarge


async def read_upload(request: Request, limit: int, what: str) -> bytes:
    """The whole body of `request`, refused as soon as it exceeds `limit` bytes
    (SPLITFT_MAX_ADAPTER_BYTES) or when it is empty; `what` names the upload in the errors."""
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise PayloadTooLarge(f"{what} exceeds {limit} bytes (SPLITFT_MAX_ADAPTER_BYTES)")
    if not data:
        raise InvalidArgument(f"empty {what}")
    return bytes(data)
