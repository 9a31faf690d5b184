"""The control plane's REST contract: request (Create) and response (Public) shapes, under /v1.

The job spec (`JobCreate`) and the `Assignment` a device receives live in `splitft.jobs.spec`: the
device agent parses its assignments with those same classes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field, StrictFloat, StrictInt, field_validator

from splitft.errors import InvalidArgument
from splitft.jobs.resume import MAX_EXPIRED_PER_HEARTBEAT
from splitft.jobs.spec import NAME_PATTERN, JobCreate, Strict
from splitft.jobs.spec import Assignment as Assignment  # re-exported: the device route answers with it
from splitft.memory.estimate import MemoryProfile
from splitft.plan.choice import DeviceClass, PlanPoint
from splitft.security.tokens import check_session_id
from splitft.security.trust import TOKEN_SEPARATOR

# Free text that lands in a text column: PostgreSQL text cannot hold NUL, so refuse it here (a 422)
# rather than fail in the database (a 500).
NO_NUL_PATTERN = r"^[^\x00]*$"
# Integers that land in INTEGER / BIGINT columns must fit them (else the driver overflows: a 500).
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
JobState = Literal["pending", "running", "succeeded", "failed", "cancelled"]
SessionState = Literal["waiting", "assigned", "running", "succeeded", "failed", "cancelled"]


# --- edges ---------------------------------------------------------------------------------------


class ModelMemory(Strict):
    """One served model's memory on an edge: a default session's bytes, how many more fit, the profile."""

    session_bytes: StrictInt = Field(
        ge=0, le=INT64_MAX, description="a default session's bytes (splitft.memory.estimate.default_session)"
    )
    sessions_free: StrictInt = Field(ge=0, le=INT64_MAX, description="default sessions that still fit")
    profile: MemoryProfile | None = Field(
        None, description="what a training forward of this model keeps, as the edge measured it"
    )


class EdgeCapacity(Strict):
    """What an edge offers: free memory and how many sessions it takes at once."""

    memory_free_bytes: StrictInt = Field(
        0, ge=0, le=INT64_MAX, description="memory still free for sessions (the limit less what they hold)"
    )
    max_sessions: StrictInt = Field(16, ge=1, le=100_000, description="sessions this edge accepts at once")
    memory_limit_bytes: StrictInt = Field(
        0, ge=0, le=INT64_MAX, description="memory all sessions may hold (--memory-limit); 0: not reported"
    )
    models: dict[str, ModelMemory] = Field(
        default_factory=dict, max_length=64, description="per served model, when memory is reported"
    )


class EdgeRegister(Strict):
    """POST /v1/edges/register: an edge's name, its gRPC address and the models it serves."""

    name: str = Field(pattern=NAME_PATTERN, description="stable name; re-registering a name updates it")
    address: str = Field(
        min_length=3,
        max_length=255,
        pattern=r"^[^\s\x00-\x1f\x7f]+$",  # no spaces or control characters (NUL breaks PostgreSQL)
        description="host:port devices dial for gRPC",
    )
    models: list[str] = Field(min_length=1, max_length=64, description="model names this edge serves")
    capacity: EdgeCapacity = Field(default_factory=EdgeCapacity)
    credential: str | None = Field(
        None,
        pattern=r"^sfe_[A-Za-z0-9_-]{43,128}$",
        description="the heartbeat credential the edge will hold (32+ random bytes, urlsafe base64), "
        "kept by the edge before it asks: a registration whose answer was lost is retried with it. "
        "None: the control plane draws one",
    )


class EdgeRegistered(Strict):
    """The registration answer: the edge's id, its heartbeat credential and the token issuer key."""

    id: str
    credential: str = Field(description="per-edge secret for heartbeats; shown once")
    token_issuer_public_key: str = Field(description="PEM; the edge verifies session tokens with it")
    heartbeat_interval_seconds: float


class EdgeHeartbeat(Strict):
    """POST /v1/edges/{id}/heartbeat: the edge's load and, when it changed, its capacity; the sessions
    its TTL expired since its last answered heartbeat."""

    capacity: EdgeCapacity | None = None
    active_sessions: StrictInt = Field(0, ge=0, le=INT32_MAX)
    expired_sessions: list[str] = Field(
        default_factory=list,
        max_length=MAX_EXPIRED_PER_HEARTBEAT,
        description="sessions this edge expired (idle past its TTL: their device went silent); the "
        "control plane fails those placed on this edge unless their device reported since. Others "
        "are ignored (and logged)",
    )
    session_ttl_seconds: StrictFloat | None = Field(
        None, gt=0, le=1e9, description="the edge's idle-session TTL, quoted in the failed sessions' reason"
    )

    @field_validator("expired_sessions")
    @classmethod
    def _session_ids(cls, ids: list[str]) -> list[str]:
        for i, session_id in enumerate(ids):
            try:
                check_session_id(session_id)
            except InvalidArgument as exc:
                raise ValueError(f"expired_sessions[{i}]: {exc}") from None
        return list(dict.fromkeys(ids))


class EdgePublic(Strict):
    """An edge as operators see it."""

    id: str
    name: str
    address: str
    models: list[str]
    capacity: EdgeCapacity
    status: Literal["up", "down", "disabled"]
    active_sessions: int
    last_heartbeat_at: datetime | None


class EdgeHeartbeatAnswer(EdgePublic):
    """The heartbeat answer: the edge as stored, and the sessions it must close."""

    close_sessions: list[str] = Field(
        default_factory=list,
        description="sessions this edge must close and refuse to open: their job was cancelled, "
        "their device disabled, or they were placed on another edge (the whole current list)",
    )


# --- devices -------------------------------------------------------------------------------------


class DeviceCreate(Strict):
    """POST /v1/devices: the new device's name."""

    name: str = Field(pattern=NAME_PATTERN, description="unique; becomes the CN of its client certificate")
    device_class: DeviceClass | None = Field(
        None, description='memory, link and speed: what a split "auto" job plans this device for'
    )


class DeviceCreated(Strict):
    """The creation answer: the device and its one-time enrollment token."""

    id: str
    name: str
    enrollment_token: str = Field(
        description="one-time; the device trades it for a credential. `<secret>.<CA SHA-256>` when the "
        "control plane has a deployment CA: the device refuses any other CA"
    )


class DeviceEnroll(Strict):
    """POST /v1/devices/enroll: the enrollment token and, for a client certificate, a CSR."""

    enrollment_token: str = Field(min_length=8, max_length=512)
    csr_pem: str | None = Field(None, max_length=16_384, description="PEM CSR for a client certificate")

    @field_validator("enrollment_token")
    @classmethod
    def _secret_only(cls, value: str) -> str:
        # The CA fingerprint after the last "." is for the device; the store knows the secret's hash.
        """The secret part of the token (the CA fingerprint after the separator is the device's to check)."""
        secret, sep, _ = value.rpartition(TOKEN_SEPARATOR)
        return secret if sep and secret else value


class DeviceEnrolled(Strict):
    """The enrollment answer: the device credential, and its certificate and the CA when a CSR was sent."""

    id: str
    name: str
    credential: str = Field(description="device secret for /v1/assignments and /v1/sessions; shown once")
    certificate_pem: str | None = None
    ca_pem: str | None = None


class DevicePublic(Strict):
    """A device as operators see it."""

    id: str
    name: str
    status: Literal["pending", "enrolled", "disabled"]
    created_at: datetime
    enrolled_at: datetime | None
    disabled_at: datetime | None = None
    device_class: DeviceClass | None = None


# --- jobs ----------------------------------------------------------------------------------------


class SessionPublic(Strict):
    """One device's session in a job, as operators see it."""

    id: str
    device: str
    edge_id: str | None
    state: SessionState
    reason: str
    attempts: int
    has_adapter: bool
    round: int | None = Field(None, description="federated jobs: the round of this session")
    plan_point: PlanPoint | None = Field(
        None, description='split "auto": the front point chosen for its device\'s class'
    )


class RoundPublic(Strict):
    """One round of a federated job, as operators see it."""

    number: int
    state: Literal["running", "aggregated", "failed"]
    reason: str
    deadline_at: datetime
    participants: list[str] = Field(description="devices whose uploads were aggregated")
    missed: list[str] = Field(description="devices that failed or missed the deadline")
    mean_loss: float | None = Field(description="mean of the participants' last reported losses")
    bytes_up: int = Field(description="adapter bytes the participants uploaded")
    bytes_down: int = Field(description="global adapter bytes devices downloaded to start the round")
    aggregation_error: float | None = Field(description="AirComp: relative error against FedAvg")
    finished_at: datetime | None


class JobPublic(Strict):
    """A job as operators see it: its spec, state, and every session."""

    id: str
    name: str
    state: JobState
    reason: str = Field(description="why the job waits or failed; empty when nothing to say")
    spec: JobCreate
    sessions: list[SessionPublic]
    created_at: datetime
    updated_at: datetime


class MetricPoint(Strict):
    """One training point a device reports (finite numbers only)."""

    step: StrictInt = Field(ge=0, le=INT32_MAX)
    loss: StrictFloat = Field(allow_inf_nan=False)
    examples_per_second: StrictFloat | None = Field(None, ge=0, allow_inf_nan=False)
    bytes_sent: StrictInt | None = Field(None, ge=0, le=INT64_MAX)
    bytes_received: StrictInt | None = Field(None, ge=0, le=INT64_MAX)


class MetricsReport(Strict):
    """POST /v1/sessions/{id}/metrics: a batch of points."""

    points: list[MetricPoint] = Field(min_length=1, max_length=10_000)


class SessionMetrics(Strict):
    """One session's points within a page of job metrics."""

    session_id: str
    device: str
    points: list[MetricPoint]


class JobMetrics(Strict):
    """GET /v1/jobs/{id}/metrics: one page of points, by session, and the cursor of the next."""

    job_id: str
    sessions: list[SessionMetrics]
    next_after: int | None = Field(
        None, description="pass as ?after= for the next page; null when this page is the last"
    )


class SessionFail(Strict):
    """POST /v1/sessions/{id}/fail: why the device gave up."""

    reason: str = Field(min_length=1, max_length=2000, pattern=NO_NUL_PATTERN)


class PlanSummary(Strict):
    """A registered plan as listed (GET /v1/plans); GET /v1/plans/{id} returns the whole plan file."""

    id: str
    model: str
    created_at: datetime
    candidates: dict[str, int] = Field(description="candidates by status (measured, refused, ...)")


class ApiKeyCreated(Strict):
    """A new operator API key; the key itself is shown once."""

    id: str
    name: str
    key: str = Field(description="shown once")


class Problem(Strict):
    """Every error answer: one human-readable detail."""

    detail: str
