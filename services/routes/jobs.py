"""Jobs: create, list, inspect, cancel, metrics, and each device's finished adapter."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from splitft.plan.choice import PlanPoint
from splitft_control.deps import Operator, State, StoreDep
from splitft_control.models import Job, JobSession
from splitft_control.schemas import (
    JobCreate,
    JobMetrics,
    JobPublic,
    JobState,
    MetricPoint,
    RoundPublic,
    SessionMetrics,
    SessionPublic,
)

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=[Operator])


def session_public(sess: JobSession, device: str) -> SessionPublic:
    """A session as operators see it (whether an adapter is stored, never its bytes)."""
    return SessionPublic(
        id=sess.id,
        device=device,
        edge_id=sess.edge_id,
        state=sess.state,  # type: ignore[arg-type]
        reason=sess.reason,
        attempts=sess.attempts,
        has_adapter=sess.adapter is not None,
        round=sess.round,
        plan_point=PlanPoint.model_validate(sess.plan_point) if sess.plan_point else None,
    )


def job_public(job: Job, sessions: list[tuple[JobSession, str]]) -> JobPublic:
    """A job with its validated spec and its sessions."""
    return JobPublic(
        id=job.id,
        name=job.name,
        state=job.state,
        reason=job.reason,  # type: ignore[arg-type]
        spec=JobCreate.model_validate(job.spec),
        sessions=[session_public(s, d) for s, d in sessions],
        created_at=job.created_at,
        updated_at=job.updated_at,
    )


@router.post("", response_model=JobPublic, status_code=status.HTTP_201_CREATED)
def create_job(body: JobCreate, state: State) -> JobPublic:
    """Create a job with one session per named device and try to place them on edges at once.
    Operators only (401, as for every /v1/jobs route); 404 names unknown devices, 422 an invalid spec."""
    job = state.store.create_job(name=body.name, spec=body.model_dump(mode="json"), device_names=body.devices)
    state.store.place_waiting()
    return job_public(*state.store.get_job(job_id=job.id))


@router.get("", response_model=list[JobPublic])
def list_jobs(
    store: StoreDep,
    state: JobState | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> list[JobPublic]:
    """One page of jobs, newest first, optionally in one state. Operators only (401); 422 for an
    unknown state or page bounds out of range."""
    return [
        job_public(*store.get_job(job_id=j.id))
        for j in store.list_jobs(state=state, limit=limit, offset=offset)
    ]


@router.get("/{job_id}", response_model=JobPublic)
def get_job(job_id: str, store: StoreDep) -> JobPublic:
    """The job with its sessions' states and reasons. Operators only (401); 404 for an unknown id."""
    return job_public(*store.get_job(job_id=job_id))


@router.post("/{job_id}/cancel", response_model=JobPublic)
def cancel_job(job_id: str, store: StoreDep) -> JobPublic:
    """Cancel the job; its unfinished sessions are cancelled and their edges told to close them.
    Operators only (401); 404 for an unknown id, 409 for a job that already ended."""
    store.cancel_job(job_id=job_id)
    return job_public(*store.get_job(job_id=job_id))


METRICS_PAGE_DEFAULT = 1000
METRICS_PAGE_MAX = 10_000


@router.get("/{job_id}/metrics", response_model=JobMetrics)
def job_metrics(
    job_id: str,
    store: StoreDep,
    limit: Annotated[int, Query(ge=1, le=METRICS_PAGE_MAX)] = METRICS_PAGE_DEFAULT,
    after: Annotated[int, Query(ge=0, le=2**62)] = 0,
) -> JobMetrics:
    """One page of the job's points, in the order they were stored; `next_after` fetches the next.
    Operators only (401); 404 for an unknown id, 422 for page bounds out of range."""
    page, next_after = store.job_metrics(job_id=job_id, limit=limit, after=after)
    sessions = [
        SessionMetrics(
            session_id=sess.id,
            device=device,
            points=[
                MetricPoint(
                    step=m.step,
                    loss=m.loss,
                    examples_per_second=m.examples_per_second,
                    bytes_sent=m.bytes_sent,
                    bytes_received=m.bytes_received,
                )
                for m in points
            ],
        )
        for sess, device, points in page
    ]
    return JobMetrics(job_id=job_id, sessions=sessions, next_after=next_after)


@router.get(
    "/{job_id}/adapters/{device}",
    response_class=Response,
    responses={200: {"content": {"application/gzip": {}}, "description": "the adapter as a .tar.gz"}},
)
def download_adapter(job_id: str, device: str, store: StoreDep) -> Response:
    """The adapter archive (.tar.gz) the device trained in this job. Operators only (401); 404 for
    an unknown job or a device not in it, 409 while its session has not succeeded."""
    data = store.adapter(job_id=job_id, device_name=device)
    return Response(
        content=data,
        media_type="application/gzip",
        headers={"Content-Disposition": f'attachment; filename="{job_id}-{device}-adapter.tar.gz"'},
    )


@router.get(
    "/{job_id}/adapter",
    response_class=Response,
    responses={200: {"content": {"application/gzip": {}}, "description": "the global adapter as a .tar.gz"}},
)
def download_global_adapter(job_id: str, store: StoreDep) -> Response:
    """A federated job's result: one peft adapter for the whole model (its last round's global
    adapter). 404 unknown job; 409 while it has not succeeded, or for an independent job (whose
    devices each have theirs at /v1/jobs/{id}/adapters/{device})."""
    data = store.global_adapter(job_id=job_id)
    return Response(
        content=data,
        media_type="application/gzip",
        headers={"Content-Disposition": f'attachment; filename="{job_id}-global-adapter.tar.gz"'},
    )


@router.get("/{job_id}/rounds", response_model=list[RoundPublic])
def list_rounds(job_id: str, store: StoreDep) -> list[RoundPublic]:
    """A federated job's rounds so far: participants, mean loss, bytes, AirComp's error. 404 unknown
    job; an independent job has none."""
    return [
        RoundPublic(
            number=r.number,
            state=r.state,  # type: ignore[arg-type]
            reason=r.reason,
            deadline_at=r.deadline_at,
            participants=list(r.participants),
            missed=list(r.missed),
            mean_loss=r.mean_loss,
            bytes_up=r.bytes_up,
            bytes_down=r.bytes_down,
            aggregation_error=r.aggregation_error,
            finished_at=r.finished_at,
        )
        for r in store.rounds(job_id=job_id)
    ]
