"""The control plane's REST contract: request (Create) and response (Public) shapes, under /v1."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, field_validator, model_validator

from splitft.compress import parse_codecs
from splitft.errors import InvalidArgument
from splitft.security.trust import TOKEN_SEPARATOR
from splitft.wire.serde import EdgeOptimizer

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
# Free text that lands in a text column: PostgreSQL text cannot hold NUL, so refuse it here (a 422)
# rather than fail in the database (a 500).
NO_NUL_PATTERN = r"^[^\x00]*$"
# Integers that land in INTEGER / BIGINT columns must fit them (else the driver overflows: a 500).
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
JobState = Literal["pending", "running", "succeeded", "failed", "cancelled"]
SessionState = Literal["waiting", "assigned", "running", "succeeded", "failed", "cancelled"]


class Strict(BaseModel):
    """Unknown fields are refused. Numbers in requests are `StrictInt`/`StrictFloat`: lax pydantic would
    read JSON `true` as 1 and `"0.1"` as 0.1, which hides a client's mistake instead of naming it."""

    model_config = ConfigDict(extra="forbid")


# --- edges ---------------------------------------------------------------------------------------


class EdgeCapacity(Strict):
    memory_free_bytes: StrictInt = Field(
        0, ge=0, le=INT64_MAX, description="free accelerator/host memory for sessions"
    )
    max_sessions: StrictInt = Field(16, ge=1, le=100_000, description="sessions this edge accepts at once")


class EdgeRegister(Strict):
    name: str = Field(pattern=NAME_PATTERN, description="stable name; re-registering a name updates it")
    address: str = Field(
        min_length=3,
        max_length=255,
        pattern=r"^[^\s\x00-\x1f\x7f]+$",  # no spaces or control characters (NUL breaks PostgreSQL)
        description="host:port devices dial for gRPC",
    )
    models: list[str] = Field(min_length=1, max_length=64, description="model names this edge serves")
    capacity: EdgeCapacity = Field(default_factory=EdgeCapacity)


class EdgeRegistered(Strict):
    id: str
    credential: str = Field(description="per-edge secret for heartbeats; shown once")
    token_issuer_public_key: str = Field(description="PEM; the edge verifies session tokens with it")
    heartbeat_interval_seconds: float


class EdgeHeartbeat(Strict):
    capacity: EdgeCapacity | None = None
    active_sessions: StrictInt = Field(0, ge=0, le=INT32_MAX)


class EdgePublic(Strict):
    id: str
    name: str
    address: str
    models: list[str]
    capacity: EdgeCapacity
    status: Literal["up", "down", "disabled"]
    active_sessions: int
    last_heartbeat_at: datetime | None


class EdgeHeartbeatAnswer(EdgePublic):
    close_sessions: list[str] = Field(
        default_factory=list,
        description="sessions this edge must close and refuse to open: their job was cancelled, "
        "their device disabled, or they were placed on another edge (the whole current list)",
    )


# --- devices -------------------------------------------------------------------------------------


class DeviceCreate(Strict):
    name: str = Field(pattern=NAME_PATTERN, description="unique; becomes the CN of its client certificate")


class DeviceCreated(Strict):
    id: str
    name: str
    enrollment_token: str = Field(
        description="one-time; the device trades it for a credential. `<secret>.<CA SHA-256>` when the "
        "control plane has a deployment CA: the device refuses any other CA"
    )


class DeviceEnroll(Strict):
    enrollment_token: str = Field(min_length=8, max_length=512)
    csr_pem: str | None = Field(None, max_length=16_384, description="PEM CSR for a client certificate")

    @field_validator("enrollment_token")
    @classmethod
    def _secret_only(cls, value: str) -> str:
        # The CA fingerprint after the last "." is for the device; the store knows the secret's hash.
        secret, sep, _ = value.rpartition(TOKEN_SEPARATOR)
        return secret if sep and secret else value


class DeviceEnrolled(Strict):
    id: str
    name: str
    credential: str = Field(description="device secret for /v1/assignments and /v1/sessions; shown once")
    certificate_pem: str | None = None
    ca_pem: str | None = None


class DevicePublic(Strict):
    id: str
    name: str
    status: Literal["pending", "enrolled", "disabled"]
    created_at: datetime
    enrolled_at: datetime | None
    disabled_at: datetime | None = None


# --- jobs ----------------------------------------------------------------------------------------


class LoraSpec(Strict):
    r: StrictInt = Field(8, ge=1, le=1024)
    lora_alpha: StrictFloat = Field(16, gt=0, allow_inf_nan=False)  # inf would reach devices as null
    lora_dropout: StrictFloat = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(min_length=1, max_length=64)
    task_type: Literal["SEQ_CLS", "CAUSAL_LM"] | None = None


class TaskEdgeSpec(Strict):
    budget_fraction: StrictFloat = Field(0.001, gt=0, le=1, description="share of ALL parameters to train")
    n_m: tuple[StrictInt, StrictInt] | None = Field(None, description="N:M structure, e.g. [2, 4]")
    target_modules: list[str] | None = Field(None, max_length=64, description="default: every block Linear")
    calibration_batches: StrictInt = Field(
        4, ge=1, le=1000, description="labels-free batches scored on the device"
    )


class TinyTrainSpec(Strict):
    memory_budget_bytes: StrictFloat | None = Field(
        None, gt=0, allow_inf_nan=False, description="backward bytes of the trained layers; null: no limit"
    )
    compute_budget_macs: StrictFloat | None = Field(
        None, gt=0, allow_inf_nan=False, description="backward multiply-accumulates per step; null: no limit"
    )
    channel_ratios: list[float] = Field(
        [1.0, 0.5, 0.25, 0.125], min_length=1, max_length=16, description="channel fractions, each in (0, 1]"
    )
    target_modules: list[str] | None = Field(None, max_length=64, description="default: every block Linear")
    calibration_batches: StrictInt = Field(
        4, ge=1, le=1000, description="labelled support-set batches, on the device"
    )

    @model_validator(mode="after")
    def _ratios(self) -> TinyTrainSpec:
        if any(not 0 < r <= 1 for r in self.channel_ratios) or len(set(self.channel_ratios)) != len(
            self.channel_ratios
        ):
            raise ValueError("channel_ratios must be distinct numbers in (0, 1]")
        return self


class OptimizerSpec(Strict):
    name: EdgeOptimizer = "AdamW"  # what the edge can run for the trunk adapter (splitft.wire.serde)
    lr: StrictFloat = Field(1e-3, gt=0, le=10)
    weight_decay: StrictFloat = Field(0.0, ge=0, le=10)


class ScheduleSpec(Strict):
    name: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: StrictInt = Field(0, ge=0, le=1_000_000)


class JobCreate(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    model: str = Field(min_length=1, max_length=128, description="model name as the edges serve it")
    device_layers: StrictInt = Field(ge=1, le=1024)
    head_layers: StrictInt = Field(0, ge=0, le=1024)
    method: Literal["lora", "taskedge", "tinytrain"] = "lora"
    lora: LoraSpec | None = Field(None, description="required when method is lora")
    taskedge: TaskEdgeSpec | None = Field(
        None, description="with method taskedge; defaults apply when absent"
    )
    tinytrain: TinyTrainSpec | None = Field(
        None, description="with method tinytrain; defaults (no budget limit: every channel) apply when absent"
    )
    trunk_lora: bool = True
    codec: str | dict[str, str] = Field(
        "raw",
        description='one codec for both directions ("raw", "fp16", "bf16", "int8", "int8:sr", "int4") or '
        'one per direction, e.g. {"activations": "int8", "gradients": "lowrank:8:noef"} (gradients also '
        'take "topk:0.01"; ":noef" turns error feedback off); stored in its canonical string form',
    )
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    steps: StrictInt | None = Field(None, ge=1, le=10_000_000)
    epochs: StrictInt | None = Field(None, ge=1, le=10_000)
    batch_size: StrictInt = Field(16, ge=1, le=4096)
    max_length: StrictInt = Field(128, ge=8, le=8192)
    num_labels: StrictInt | None = Field(
        None, ge=2, le=100_000, description="classes, for classification heads"
    )
    clip_grad_norm: StrictFloat | None = Field(1.0, gt=0, allow_inf_nan=False)
    devices: list[str] = Field(min_length=1, max_length=10_000, description="device names")

    @field_validator("codec")
    @classmethod
    def _canonical_codec(cls, value: str | dict[str, str]) -> str:
        try:
            return str(parse_codecs(value))
        except InvalidArgument as exc:
            raise ValueError(exc.message) from None

    @model_validator(mode="after")
    def _one_length(self) -> JobCreate:
        if (self.steps is None) == (self.epochs is None):
            raise ValueError("give exactly one of steps or epochs")
        if len(set(self.devices)) != len(self.devices):
            raise ValueError("devices must not repeat")
        if self.method == "lora" and self.lora is None:
            raise ValueError("method 'lora' needs a lora spec")
        if self.method != "lora" and self.lora is not None:
            raise ValueError(f"method {self.method!r} trains selected weights, not LoRA: drop the lora spec")
        for method in ("taskedge", "tinytrain"):
            if self.method != method and getattr(self, method) is not None:
                raise ValueError(f"a {method} spec needs method {method!r}")
        return self


class SessionPublic(Strict):
    id: str
    device: str
    edge_id: str | None
    state: SessionState
    reason: str
    attempts: int
    has_adapter: bool


class JobPublic(Strict):
    id: str
    name: str
    state: JobState
    reason: str = Field(description="why the job waits or failed; empty when nothing to say")
    spec: JobCreate
    sessions: list[SessionPublic]
    created_at: datetime
    updated_at: datetime


class MetricPoint(Strict):
    step: StrictInt = Field(ge=0, le=INT32_MAX)
    loss: StrictFloat = Field(allow_inf_nan=False)
    examples_per_second: StrictFloat | None = Field(None, ge=0, allow_inf_nan=False)
    bytes_sent: StrictInt | None = Field(None, ge=0, le=INT64_MAX)
    bytes_received: StrictInt | None = Field(None, ge=0, le=INT64_MAX)


class MetricsReport(Strict):
    points: list[MetricPoint] = Field(min_length=1, max_length=10_000)


class SessionMetrics(Strict):
    session_id: str
    device: str
    points: list[MetricPoint]


class JobMetrics(Strict):
    job_id: str
    sessions: list[SessionMetrics]
    next_after: int | None = Field(
        None, description="pass as ?after= for the next page; null when this page is the last"
    )


class SessionFail(Strict):
    reason: str = Field(min_length=1, max_length=2000, pattern=NO_NUL_PATTERN)


# --- device side ---------------------------------------------------------------------------------


class Assignment(Strict):
    session_id: str
    job_id: str
    edge_address: str
    token: str = Field(description="signed session token for the edge")
    spec: JobCreate


class ApiKeyCreated(Strict):
    id: str
    name: str
    key: str = Field(description="shown once")


class Problem(Strict):
    detail: str
