"""The planner's candidates and what was measured for each (torch-free: the control plane reads
plan files with these classes).

A candidate is one way to run the device's side: the split (k blocks before the trunk, j after
it), the LoRA rank (device and trunk adapters alike), a codec per direction and the precision of
the device's frozen blocks. Its result holds the figures the planner measured on this machine,
which do not depend on the device class; `splitft.plan.choice` projects them onto a class.
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, StrictFloat, StrictInt, model_validator

from splitft.compress import parse_codecs
from splitft.errors import InvalidArgument
from splitft.jobs.strict import Strict
from splitft.model.schemes import PRECISIONS

__all__ = ["PRECISIONS", "Candidate", "CandidateResult", "Measured"]
Precision = Literal["fp32", "bf16", "int8"]
# What the SDK takes for each precision: the device span's dtype and its quantization scheme.
PRECISION_SDK: dict[str, tuple[str, str]] = {
    "fp32": ("float32", "none"),
    "bf16": ("bfloat16", "none"),
    "int8": ("float32", "int8"),
}
Status = Literal["measured", "refused", "failed", "skipped"]


class Candidate(Strict):
    """One configuration of the device's side; `name` identifies it in tables, plots and plans."""

    model_config = ConfigDict(extra="forbid", frozen=True)  # hashable: classes key caches

    device_layers: StrictInt = Field(ge=1, le=1024)
    head_layers: StrictInt = Field(ge=0, le=1024)
    lora_r: StrictInt = Field(ge=1, le=1024)
    activations: str = Field("raw", max_length=64, description="codec of what travels up (canonical)")
    gradients: str = Field("raw", max_length=64, description="codec of what travels down (canonical)")
    precision: Precision = "fp32"

    @property
    def name(self) -> str:
        """e.g. `k2j1-r8-int8/raw-bf16`: split, rank, codec up / down, precision."""
        return (
            f"k{self.device_layers}j{self.head_layers}-r{self.lora_r}-"
            f"{self.activations}/{self.gradients}-{self.precision}"
        )

    @property
    def codec(self) -> str:
        """Both directions as the SDK and the job spec take them (canonical; InvalidArgument if not)."""
        return str(parse_codecs({"activations": self.activations, "gradients": self.gradients}))

    def problem(self, num_layers: int) -> str | None:
        """Why this candidate cannot run on a model of `num_layers` blocks; None when it can."""
        if self.device_layers + self.head_layers >= num_layers:
            return (
                f"split k={self.device_layers}, j={self.head_layers} leaves no trunk block of the model's "
                f"{num_layers} (need k + j < {num_layers})"
            )
        try:
            self.codec  # noqa: B018  # parsed for its refusal
        except InvalidArgument as exc:
            return f"codec: {exc.message}"
        return None


class Measured(Strict):
    """What one run of a candidate measured on this machine (per training step, after a warm-up step)."""

    device_peak_bytes: StrictInt = Field(ge=0, description="device process: peak RSS over its baseline")
    bytes_up: StrictInt = Field(ge=0, description="bytes the device sent per step")
    bytes_down: StrictInt = Field(ge=0, description="bytes the device received per step")
    device_compute_s: StrictFloat = Field(ge=0, allow_inf_nan=False, description="device CPU s per step")
    edge_compute_s: StrictFloat = Field(ge=0, allow_inf_nan=False, description="edge CPU s per step")
    loopback_step_s: StrictFloat = Field(ge=0, allow_inf_nan=False, description="wall s per step here")
    held_out_loss: StrictFloat = Field(allow_inf_nan=False)
    held_out_accuracy: StrictFloat | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    train_steps: StrictInt = Field(ge=1)


class CandidateResult(Strict):
    """A candidate and its outcome: measured (with figures), refused before running, failed while
    running (the error's reason), or skipped (the budget ran out)."""

    candidate: Candidate
    status: Status
    reason: str = Field("", max_length=2000)
    measured: Measured | None = None

    @model_validator(mode="after")
    def _figures_iff_measured(self) -> CandidateResult:
        if (self.status == "measured") != (self.measured is not None):
            raise ValueError("figures are given exactly for a measured candidate")
        if self.status == "measured":  # what a device will be told to run must be valid
            try:
                self.candidate.codec  # noqa: B018  # parsed for its refusal
            except InvalidArgument as exc:
                raise ValueError(f"measured candidate {self.name}: {exc.message}") from None
        return self

    @property
    def name(self) -> str:
        """The candidate's name."""
        return self.candidate.name
