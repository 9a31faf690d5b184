"""What devices call in a secure round (`federated.secure_aggregation`): the key, the members, the
masked update (docs/federated.md). The session's own device only, like every device route: 401
unknown credential, 403 disabled device or another device's session, 404 unknown session, 409 when the
session is not open or its job does not use secure aggregation."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from fastapi import APIRouter, Request, Response, status
from pydantic import Field, StrictInt
from starlette.concurrency import run_in_threadpool

from splitft.errors import InvalidArgument
from splitft.federated.fixedpoint import FRACTION_BITS
from splitft.federated.secagg import KEY_BYTES
from splitft.jobs.spec import Strict
from splitft_control.deps import DeviceDep, State, StoreDep
from splitft_control.routes.body import read_upload
from splitft_control.schemas import INT32_MAX
from splitft_control.store.secagg import KeyOffer

router = APIRouter(prefix="/v1/sessions/{session_id}/secagg", tags=["device"])
MEMBERS_RETRY_AFTER = "1"  # seconds: members are fixed when the round's last device has trained


class SecAggKey(Strict):
    """POST .../secagg/key: the device's X25519 public key for this round and, in the clear, what the
    control plane needs to read the members' sum: the update's layout, its peft config, its weight."""

    public_key: str = Field(min_length=1, max_length=64, description="raw 32-byte X25519 key, base64")
    layout: list[Any] = Field(
        min_length=1, max_length=100_000, description="[name, shape, dtype] per tensor, names sorted"
    )
    adapter_config: dict[str, Any] = Field(description="the adapter's adapter_config.json")
    examples: StrictInt = Field(ge=1, le=INT32_MAX, description="local examples: the FedAvg weight")


class SecAggMember(Strict):
    """One member of a secure round: its device name (the masks' order) and its public key."""

    device: str
    public_key: str = Field(description="raw 32-byte X25519 key, base64")


class SecAggMembers(Strict):
    """GET .../secagg/members: the round's fixed members, the masks' context and the encoding."""

    context: str = Field(description="job:round:attempt, bound into every pairwise seed")
    fraction_bits: int = Field(description="fixed point: entries are round(w x 2^fraction_bits) mod 2^64")
    members: list[SecAggMember]


@router.post("/key", status_code=status.HTTP_204_NO_CONTENT)
def post_key(session_id: str, body: SecAggKey, device: DeviceDep, store: StoreDep) -> Response:
    """Offer the session's public key once it has trained. 400 for a key that is not 32 bytes of
    base64, a bad layout or config, or one that differs from the other members'; 409 for a second
    key, or once the round's members are fixed."""
    try:
        key = base64.b64decode(body.public_key, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument("public_key must be base64") from None
    if len(key) != KEY_BYTES:
        raise InvalidArgument(f"public_key must be {KEY_BYTES} raw bytes, got {len(key)}")
    offer = KeyOffer(key, body.layout, body.adapter_config, body.examples)
    store.post_secagg_key(session_id=session_id, device_id=device.id, offer=offer)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/members",
    response_model=SecAggMembers,
    responses={204: {"description": "members not fixed yet; poll again after Retry-After seconds"}},
)
def get_members(session_id: str, device: DeviceDep, store: StoreDep) -> SecAggMembers | Response:
    """The round's members and their public keys once fixed; 204 with Retry-After until then; 409
    before the session posted its key."""
    found = store.secagg_members(session_id=session_id, device_id=device.id)
    if found is None:
        return Response(status_code=status.HTTP_204_NO_CONTENT, headers={"Retry-After": MEMBERS_RETRY_AFTER})
    members = [
        SecAggMember(device=name, public_key=base64.b64encode(key).decode())
        for name, key in found.keys.items()
    ]
    return SecAggMembers(context=found.context, fraction_bits=FRACTION_BITS, members=members)


@router.post(
    "/masked",
    status_code=status.HTTP_204_NO_CONTENT,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def post_masked(session_id: str, request: Request, device: DeviceDep, state: State) -> Response:
    """Upload the session's masked update: 8 bytes (little-endian uint64) per entry of its layout;
    the session succeeds. 400 for another size; 409 before its key, before the members are fixed, or
    twice; 413 over SPLITFT_MAX_ADAPTER_BYTES. The session must be open before the body is read."""
    await run_in_threadpool(state.store.check_open_session, session_id=session_id, device_id=device.id)
    data = await read_upload(request, state.settings.max_adapter_bytes, "masked update")
    await run_in_threadpool(state.store.upload_masked, session_id=session_id, device_id=device.id, data=data)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
