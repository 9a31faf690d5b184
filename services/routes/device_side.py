"""What devices call: the next assignment, metrics, completion (adapter upload), failure."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status
from starlette.concurrency import run_in_threadpool

from splitft.errors import FailedPrecondition
from splitft.plan.choice import DeviceClass, PlanPoint
from splitft.security.tokens import SplitClaims, issue_token
from splitft_control.archive import ArchiveLimits, check_adapter_archive
from splitft_control.deps import DeviceDep, State, StoreDep
from splitft_control.routes.body import read_upload
from splitft_control.scheduler import shared_adapter_key
from splitft_control.schemas import Assignment, JobCreate, MetricsReport, SessionFail
from splitft_control.store.plans import session_spec

router = APIRouter(prefix="/v1", tags=["device"])


@router.get(
    "/assignments/next",
    response_model=Assignment,
    responses={204: {"description": "nothing assigned yet; poll again after Retry-After seconds"}},
)
def next_assignment(device: DeviceDep, state: State) -> Assignment | Response:
    """The calling device's oldest placed session, now running, with a session token for its edge;
    204 with Retry-After while nothing is placed. Enrolled devices only (401 unknown credential,
    403 disabled device)."""
    found = state.store.next_assignment(device_id=device.id)
    if found is None:
        return Response(status_code=status.HTTP_204_NO_CONTENT, headers={"Retry-After": "2"})
    sess, job, edge = found
    spec = session_spec(JobCreate.model_validate(job.spec), sess)
    if spec is None:  # placed sessions of auto jobs always have their point: never reached
        raise FailedPrecondition(f"session {sess.id} of a split auto job has no plan point yet")
    if edge is None:  # an offsite job: the device trains against its emulator, no edge, no token
        return Assignment(session_id=sess.id, job_id=job.id, edge_address="", token="", spec=spec)
    device_layers, head_layers = spec.layers
    token = issue_token(
        state.issuer,
        session=sess.id,
        device=device.name,
        model=spec.model,
        edge=edge.id,
        job=job.id,
        ttl_seconds=state.settings.token_ttl,
        # The edge refuses an OpenSession whose split differs from the job's (PERMISSION_DENIED).
        split=SplitClaims(
            device_layers=device_layers,
            head_layers=head_layers,
            trunk_lora=spec.trunk_lora and spec.method == "lora",
            codec=spec.codec,
        ),
    )
    starts_from_adapter = sess.round is not None and (
        sess.round > 0 or (spec.federated is not None and spec.federated.initial_adapter is not None)
    )
    return Assignment(
        session_id=sess.id,
        job_id=job.id,
        edge_address=edge.address,
        token=token,
        spec=spec,
        round=sess.round,
        initial_adapter=starts_from_adapter,
        plan_point=PlanPoint.model_validate(sess.plan_point) if sess.plan_point else None,
        shared_trunk_adapter=shared_adapter_key(job.id, sess.round, spec),
    )


@router.put("/device-class", status_code=status.HTTP_204_NO_CONTENT)
def set_own_class(body: DeviceClass, device: DeviceDep, store: StoreDep) -> Response:
    """The calling device registers its own class (memory for the model, uplink and downlink in
    Mbit/s, a speed factor or FLOP/s), which split "auto" jobs plan it for; what an operator sets with
    PUT /v1/devices/{id}/class. Enrolled devices only (401, 403 disabled); 422 for a bad class."""
    store.set_device_class(device_id=device.id, device_class=body)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/sessions/{session_id}/initial-adapter",
    response_class=Response,
    responses={200: {"content": {"application/gzip": {}}, "description": "the adapter to start from"}},
)
def initial_adapter(session_id: str, device: DeviceDep, store: StoreDep) -> Response:
    """What the device's federated session starts from: the previous round's global adapter (round 0:
    the job's `initial_adapter`). The session's own device only; 404 when it starts fresh."""
    data = store.initial_adapter(session_id=session_id, device_id=device.id)
    return Response(content=data, media_type="application/gzip")


@router.post("/sessions/{session_id}/metrics", status_code=status.HTTP_204_NO_CONTENT)
def report_metrics(session_id: str, body: MetricsReport, device: DeviceDep, state: State) -> Response:
    """Store training points of the device's open session. The session's own device only: 401
    unknown credential, 403 disabled device or another device's session, 404 unknown session,
    409 once it has finished, 413 over SPLITFT_MAX_METRICS_BODY_BYTES, 422 malformed points,
    429 past the per-session cap."""
    state.store.record_metrics(
        session_id=session_id,
        device_id=device.id,
        points=[p.model_dump() for p in body.points],
        max_points=state.settings.max_metric_points_per_session,
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/sessions/{session_id}/complete",
    status_code=status.HTTP_204_NO_CONTENT,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/gzip": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def complete_session(
    session_id: str,
    request: Request,
    device: DeviceDep,
    state: State,
    examples: Annotated[
        int | None, Query(ge=1, le=2**31 - 1, description="federated: local examples")
    ] = None,
) -> Response:
    """Upload the session's peft adapter as a .tar.gz; the session and maybe the job succeed.

    The session's own device only (401, 403, 404 as for metrics; 409 unless open); 413 over
    SPLITFT_MAX_ADAPTER_BYTES or for an archive that unpacks too large or holds too many members;
    400 for an empty upload or one that is not a plain adapter tar.gz (nested paths, missing files).
    The session must be open before a byte of the body is read, and the archive check runs in a
    worker thread with bounds, so an upload never stalls other requests. The body is stored whole in
    the transaction that closes the session, or not at all (a cut upload stores nothing); the same
    upload again to the session it succeeded is 204 and changes nothing (a retry whose answer was lost)."""
    settings = state.settings
    done = await run_in_threadpool(
        state.store.check_open_session,
        session_id=session_id,
        device_id=device.id,
        plain_upload=True,
        allow_succeeded=True,
    )
    adapter = await read_upload(request, settings.max_adapter_bytes, "adapter upload")
    limits = ArchiveLimits(settings.max_adapter_unpacked_bytes, settings.max_adapter_members)
    if not done:  # a succeeded session takes only a repeat of its stored (checked) upload: 204, else 409
        await run_in_threadpool(check_adapter_archive, adapter, limits)
    await run_in_threadpool(
        state.store.complete_session,
        session_id=session_id,
        device_id=device.id,
        adapter=adapter,
        examples=examples,
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/sessions/{session_id}/fail", status_code=status.HTTP_204_NO_CONTENT)
def fail_session(session_id: str, body: SessionFail, device: DeviceDep, store: StoreDep) -> Response:
    """The device gives up its open session with a reason; the session and its job fail.
    The session's own device only: 401, 403, 404 as for metrics, 409 unless open, 422 for a bad reason."""
    store.fail_session(session_id=session_id, device_id=device.id, reason=body.reason)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
