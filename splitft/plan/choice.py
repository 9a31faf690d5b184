"""A plan's measurements projected onto a device class, the front, and the recommendation.

The same arithmetic runs in `splitft plan run` (for the class given on its command line) and in the
control plane (for each registered device class of an `auto` job), so both recommend the same point.

Projection of a measured candidate onto a class:

* fits: its device peak memory <= the class's memory;
* step time: device compute / speed + edge compute + bytes up / uplink + bytes down / downlink,
  where speed is the class's speed factor (the device's compute speed relative to the machine that
  measured the plan), or its FLOP/s over the plan machine's measured FLOP/s. The link terms are
  serial (no pipelining, no latency term): a step sends its activations, then waits for its
  gradients.

Recommendation rule: among the measured candidates that fit, take those whose held-out loss is
within `loss_tolerance` (relative) of the best fitting loss, and of them the one with the smallest
projected step time (ties: lower loss, then lower memory, then the name). That point is always on
the front of (held-out loss, device memory, step time) over the fitting candidates.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import ConfigDict, Field, StrictFloat, StrictInt, model_validator

from splitft.jobs.strict import Strict
from splitft.plan.candidates import CandidateResult, Precision
from splitft.plan.front import pareto_front

DEFAULT_LOSS_TOLERANCE = 0.05
MAX_CANDIDATES = 2000  # a plan file's bound (the default grid is 144)
OBJECTIVES = {"minimize": ["held_out_loss", "device_peak_mb", "step_time_s"]}
RULE = (
    "among the measured candidates that fit the device's memory, those within {tol:.0%} of the best "
    "fitting held-out loss; of them the smallest projected step time (ties: lower loss, lower memory)"
)


class DeviceClass(Strict):
    """What a device offers: memory for the model's side (beyond its runtime), its link, its speed."""

    model_config = ConfigDict(extra="forbid", frozen=True)  # hashable: classes key caches

    memory_bytes: StrictInt = Field(ge=1, le=2**50, description="memory the device gives the model")
    uplink_mbps: StrictFloat = Field(gt=0, le=1e6, allow_inf_nan=False)
    downlink_mbps: StrictFloat = Field(gt=0, le=1e6, allow_inf_nan=False)
    speed_factor: StrictFloat | None = Field(
        None, gt=0, le=1e6, allow_inf_nan=False, description="device compute speed / the plan machine's"
    )
    flops: StrictFloat | None = Field(None, gt=0, allow_inf_nan=False, description="device FLOP/s")

    @model_validator(mode="after")
    def _one_speed(self) -> DeviceClass:
        if self.speed_factor is not None and self.flops is not None:
            raise ValueError("give speed_factor or flops, not both")
        return self

    def speed(self, host_flops: float | None) -> float:
        """The device's speed relative to the plan's machine (1.0 when neither is given)."""
        if self.flops is not None:
            if not host_flops:
                raise ValueError("a class given in FLOP/s needs the plan machine's FLOP/s")
            return self.flops / host_flops
        return self.speed_factor if self.speed_factor is not None else 1.0

    def key(self) -> str:
        """A stable text key of the class (the control plane caches recommendations by it)."""
        return self.model_dump_json()


class Projected(Strict):
    """A measured candidate on one device class (what the table, the plot and the front show)."""

    name: str = Field(max_length=200)
    fits: bool
    held_out_loss: float
    held_out_accuracy: float | None
    device_peak_mb: float
    bytes_per_step: int
    step_time_s: float
    device_time_s: float
    link_time_s: float


class PlanFile(Strict):
    """What `splitft plan run` writes (plan.json) and the control plane takes (POST /v1/plans): the
    model, the machine that measured it, every candidate's result, and the class it was run for."""

    model: str = Field(min_length=1, max_length=128, description="the model's name as edges serve it")
    created_at: datetime
    num_layers: StrictInt = Field(ge=2, le=4096)
    host_flops: StrictFloat | None = Field(None, gt=0, allow_inf_nan=False, description="plan machine")
    machine: dict[str, Any] = Field(default_factory=dict, description="load, cores, threads, quality run")
    candidates: list[CandidateResult] = Field(min_length=1, max_length=MAX_CANDIDATES)
    device_class: DeviceClass | None = None
    loss_tolerance: StrictFloat = Field(DEFAULT_LOSS_TOLERANCE, ge=0, le=10, allow_inf_nan=False)
    projected: list[Projected] = Field(default_factory=list, max_length=MAX_CANDIDATES)
    front: list[Annotated[str, Field(max_length=200)]] = Field(
        default_factory=list, max_length=MAX_CANDIDATES
    )
    recommended: str | None = Field(None, max_length=200)
    rule: str = Field("", max_length=1000)


def project(result: CandidateResult, cls: DeviceClass, host_flops: float | None) -> Projected | None:
    """The measured candidate on `cls`; None for one not measured."""
    m = result.measured
    if m is None:
        return None
    link = m.bytes_up * 8 / (cls.uplink_mbps * 1e6) + m.bytes_down * 8 / (cls.downlink_mbps * 1e6)
    device = m.device_compute_s / cls.speed(host_flops)
    return Projected(
        name=result.name,
        fits=m.device_peak_bytes <= cls.memory_bytes,
        held_out_loss=m.held_out_loss,
        held_out_accuracy=m.held_out_accuracy,
        device_peak_mb=round(m.device_peak_bytes / 2**20, 2),
        bytes_per_step=m.bytes_up + m.bytes_down,
        step_time_s=round(device + m.edge_compute_s + link, 6),
        device_time_s=round(device, 6),
        link_time_s=round(link, 6),
    )


def project_all(
    results: list[CandidateResult], cls: DeviceClass, host_flops: float | None
) -> list[Projected]:
    """Every measured candidate on `cls`, in the results' order."""
    return [p for r in results if (p := project(r, cls, host_flops)) is not None]


def front_of(projected: list[Projected]) -> list[Projected]:
    """The Pareto front of (held-out loss, device memory, step time), all minimized, best loss first."""
    points = [p.model_dump() for p in projected]
    front = {p["name"] for p in pareto_front(points, **OBJECTIVES)}
    return sorted((p for p in projected if p.name in front), key=lambda p: (p.held_out_loss, p.name))


def recommend(projected: list[Projected], loss_tolerance: float = DEFAULT_LOSS_TOLERANCE) -> Projected | None:
    """The recommended point by the module's rule; None when no measured candidate fits."""
    fitting = [p for p in projected if p.fits]
    if not fitting:
        return None
    best = min(p.held_out_loss for p in fitting)
    close = [p for p in fitting if p.held_out_loss <= best + abs(best) * loss_tolerance]
    return min(close, key=lambda p: (p.step_time_s, p.held_out_loss, p.device_peak_mb, p.name))


def rule_text(loss_tolerance: float) -> str:
    """The recommendation rule in words, with its tolerance."""
    return RULE.format(tol=loss_tolerance)


def plan_for_class(plan: PlanFile, cls: DeviceClass) -> PlanFile:
    """`plan` with its projection, front and recommendation for `cls` (the measurements unchanged)."""
    projected = project_all(plan.candidates, cls, plan.host_flops)
    chosen = recommend(projected, plan.loss_tolerance)
    return plan.model_copy(
        update={
            "device_class": cls,
            "projected": projected,
            "front": [p.name for p in front_of(projected)],
            "recommended": chosen.name if chosen else None,
            "rule": rule_text(plan.loss_tolerance),
        }
    )


class PlanPoint(Strict):
    """The front point an `auto` job's device got for its class: what it runs, and why (the plan, the
    class and the projected figures), shown in its assignment and on the job."""

    plan_id: str = Field(max_length=64)
    name: str = Field(max_length=200)
    device_class: DeviceClass
    device_layers: StrictInt = Field(ge=1, le=1024)
    head_layers: StrictInt = Field(ge=0, le=1024)
    lora_r: StrictInt = Field(ge=1, le=1024)
    codec: str = Field(max_length=200)
    precision: Precision
    held_out_loss: float
    device_peak_mb: float
    step_time_s: float


def recommended_point(plan: PlanFile, plan_id: str, cls: DeviceClass) -> PlanPoint | None:
    """The point `plan` recommends for `cls` (None when no measured candidate fits the class)."""
    projected = project_all(plan.candidates, cls, plan.host_flops)
    chosen = recommend(projected, plan.loss_tolerance)
    if chosen is None:
        return None
    candidate = next(r.candidate for r in plan.candidates if r.name == chosen.name)
    return PlanPoint(
        plan_id=plan_id,
        name=chosen.name,
        device_class=cls,
        device_layers=candidate.device_layers,
        head_layers=candidate.head_layers,
        lora_r=candidate.lora_r,
        codec=candidate.codec,
        precision=candidate.precision,
        held_out_loss=chosen.held_out_loss,
        device_peak_mb=chosen.device_peak_mb,
        step_time_s=chosen.step_time_s,
    )
