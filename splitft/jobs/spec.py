"""The job spec and the assignment: one declaration for the control plane and the device.

`JobCreate` is what an operator POSTs to /v1/jobs, what the store keeps, and the `spec` of the
`Assignment` a device receives from /v1/assignments/next. The control plane validates requests
strictly (unknown fields are refused); the agent validates what it receives with the SAME classes,
dropping only fields it does not know (`IGNORE_UNKNOWN`), so a newer control plane can add fields
without breaking older devices, while types, bounds and defaults are checked on both sides.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    Field,
    StrictFloat,
    StrictInt,
    field_validator,
    model_validator,
)

from splitft.compress import parse_codecs
from splitft.errors import InvalidArgument
from splitft.jobs.method_specs import SELECTION_SPECS, SelectionSpec, TaskEdgeSpec, TinyTrainSpec
from splitft.jobs.privacy_spec import PrivacySpec
from splitft.jobs.strict import IGNORE_UNKNOWN, Strict
from splitft.plan.candidates import Precision
from splitft.plan.choice import PlanPoint
from splitft.privacy.config import WITHHELD_TRUNK
from splitft.wire.serde import EdgeOptimizer

__all__ = [
    "IGNORE_UNKNOWN",
    "SELECTION_SPECS",
    "Assignment",
    "JobCreate",
    "PrivacySpec",
    "SelectionSpec",
    "Strict",
    "TaskEdgeSpec",
    "TinyTrainSpec",
]

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class LoraSpec(Strict):
    """peft LoRA settings for method lora (device span, head, and the trunk adapter when trunk_lora)."""

    r: StrictInt = Field(8, ge=1, le=1024)
    lora_alpha: StrictFloat = Field(16, gt=0, allow_inf_nan=False)  # inf would reach devices as null
    lora_dropout: StrictFloat = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(min_length=1, max_length=64)
    task_type: Literal["SEQ_CLS", "CAUSAL_LM"] | None = None


class OptimizerSpec(Strict):
    """The optimizer every part runs (device, head, and the edge for the trunk adapter)."""

    name: EdgeOptimizer = "AdamW"  # what the edge can run for the trunk adapter (splitft.wire.serde)
    lr: StrictFloat = Field(1e-3, gt=0, le=10)
    weight_decay: StrictFloat = Field(0.0, ge=0, le=10)


class ScheduleSpec(Strict):
    """The learning-rate schedule, applied on every part alike."""

    name: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: StrictInt = Field(0, ge=0, le=1_000_000)
    span: Literal["round", "job"] = Field(
        "round",
        description='a federated job\'s: "round" restarts the schedule every round (over its local '
        'steps); "job" runs one schedule over all rounds, each round continuing where the one before '
        "left off (warm-up included); an independent job's session is its whole job either way",
    )


class FederatedSpec(Strict):
    """A federated job's rounds: every device starts round r from round r-1's global adapter (round 0
    from the job's common initial adapter), trains locally, uploads its adapter with its example
    count, and the control plane aggregates them into the next global adapter (docs/federated.md)."""

    rounds: StrictInt = Field(ge=1, le=10_000)
    local_steps: StrictInt | None = Field(None, ge=1, le=1_000_000, description="optimizer steps per round")
    local_epochs: StrictInt | None = Field(None, ge=1, le=10_000, description="local epochs per round")
    aggregation: Literal["fedavg", "aircomp"] = "fedavg"
    min_devices: StrictInt = Field(1, ge=1, le=10_000, description="uploads a round needs by its deadline")
    round_timeout_s: StrictFloat = Field(3600.0, gt=0, le=7 * 86400, allow_inf_nan=False)
    trunk_adapter: Literal["averaged", "shared"] = Field(
        "averaged",
        description="averaged: each session's trunk adapter is averaged with the device parts; shared: "
        "one trunk adapter per round on the job's edge, stepped by every session (all on one edge)",
    )
    snr_db: StrictFloat | None = Field(
        20.0, ge=-30, le=100, allow_inf_nan=False, description="aircomp: receive SNR; null: noiseless"
    )
    fading: Literal["rayleigh", "none"] = "rayleigh"
    # "auto": the library's choice from the round's SNR and device count (0.01 at 20 dB, 0.3 at 0 dB
    # for 4 devices; `splitft.federated.truncation`); a number: a fixed channel power gain
    truncation: Annotated[StrictFloat, Field(ge=0, le=100, allow_inf_nan=False)] | Literal["auto"] = Field(
        "auto",
        description="aircomp: the channel power gain below which a device sits the round out (a round "
        "with every device under it is lost), or 'auto': the least expected error at the round's SNR",
    )
    secure_aggregation: bool = Field(
        False, description="the control plane sees only the sum of a round's updates (pairwise masks)"
    )
    initial_adapter: str | None = Field(
        None, max_length=64, description="a succeeded federated job whose global adapter starts round 0"
    )
    server_lr: StrictFloat = Field(
        1.0, gt=0, le=10, allow_inf_nan=False, description="FedAvgM: the server's step after aggregation"
    )
    server_momentum: StrictFloat = Field(
        0.0, ge=0, lt=1, allow_inf_nan=False, description="FedAvgM: momentum over rounds; 0 and lr 1: FedAvg"
    )

    @model_validator(mode="after")
    def _consistent(self) -> FederatedSpec:
        if (self.local_steps is None) == (self.local_epochs is None):
            raise ValueError("federated: give exactly one of local_steps or local_epochs")
        if self.trunk_adapter == "shared" and self.secure_aggregation:
            raise ValueError(
                'federated.secure_aggregation with trunk_adapter "shared" is not supported: the shared '
                'trunk adapter is the edge\'s, exported whole, not a sum of masked updates; use "averaged"'
            )
        if self.secure_aggregation and self.aggregation != "fedavg":
            raise ValueError(
                "federated.secure_aggregation sums masked updates (FedAvg); AirComp's simulated channel "
                'scales each device\'s own update, which the control plane would have to see: use "fedavg"'
            )
        if self.secure_aggregation and self.min_devices < 2:
            raise ValueError(
                "federated.secure_aggregation needs min_devices >= 2: the sum of one update is that update"
            )
        return self


class OffsiteSpec(Strict):
    """Offsite tuning (docs/planning.md, "Emulator"): each device trains its adapters against an
    emulator it holds, in its own process, with no edge; the adapter it uploads is for the full
    model (`model`), its head blocks renumbered, and loads into it with plain peft."""

    emulator: str = Field(
        pattern=NAME_PATTERN,
        description="the emulator's model name on the devices (`splitft device run --model-dir "
        "NAME=DIR`, a directory `splitft emulator build` wrote for this job's split)",
    )


class JobCreate(Strict):
    """POST /v1/jobs: what to train, how the model is split, and on which devices."""

    name: str = Field(pattern=NAME_PATTERN)
    model: str = Field(min_length=1, max_length=128, description="model name as the edges serve it")
    split: Literal["manual", "auto"] = Field(
        "manual",
        description="manual: device_layers and head_layers as given; auto: each device runs the front point "
        "the model's registered plan recommends for its device class (split, LoRA rank, codec, precision; "
        "docs/planning.md), shown on its session",
    )
    device_layers: StrictInt | None = Field(None, ge=1, le=1024, description="required unless split is auto")
    head_layers: StrictInt = Field(0, ge=0, le=1024)
    precision: Precision = Field(
        "fp32", description="the device's frozen blocks: fp32, bf16, or int8 weights (splitft[quantize])"
    )
    method: Literal["lora", "taskedge", "tinytrain"] = "lora"
    lora: LoraSpec | None = Field(None, description="required when method is lora")
    taskedge: TaskEdgeSpec | None = Field(
        None, description="with method taskedge; defaults apply when absent"
    )
    tinytrain: TinyTrainSpec | None = Field(
        None,
        description="with method tinytrain; defaults (a memory budget of a quarter of a 512 MiB device, "
        "no compute limit) apply when absent",
    )
    trunk_lora: bool = True
    codec: str | dict[str, str] = Field(
        "raw",
        description='one codec for both directions ("raw", "fp16", "bf16", "int8", "int8:sr", "int4") or '
        'one per direction, e.g. {"activations": "int8", "gradients": "lowrank:8"} (gradients also '
        'take "topk:0.01"; ":ef" / ":noef" turn error feedback on / off, by default on for topk and '
        "off for lowrank); stored in its canonical string form",
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
    checkpoint_every: StrictInt | None = Field(
        None,
        ge=1,
        le=10_000_000,
        description="the device agent checkpoints its session every N optimizer steps (on the device) and, "
        "when its edge dies, resumes from the last one on the edge it is placed on next; null: no "
        "checkpoints, such a session starts again from its first step (docs/resilience.md)",
    )
    devices: list[str] = Field(min_length=1, max_length=10_000, description="device names")
    seed: StrictInt | None = Field(
        None,
        ge=0,
        lt=2**62,
        description="the common initialisation; each device's data order and dropout follow (seed, device "
        "name, round) (splitft.jobs.seeds); null: derived from the job id",
    )
    mode: Literal["independent", "federated"] = Field(
        "independent", description="independent: an adapter per device; federated: one global adapter"
    )
    federated: FederatedSpec | None = Field(None, description="the rounds, with mode federated")
    offsite: OffsiteSpec | None = Field(
        None, description="train against an emulator on each device, with no edge (trunk_lora false)"
    )
    privacy: PrivacySpec | None = Field(
        None, description="defenses against a curious edge (docs/privacy.md); null: none"
    )

    @field_validator("codec")
    @classmethod
    def _canonical_codec(cls, value: str | dict[str, str]) -> str:
        """Store the codec in its canonical string form; an unknown one is a 422 naming it."""
        try:
            return str(parse_codecs(value))
        except InvalidArgument as exc:
            raise ValueError(exc.message) from None

    @model_validator(mode="after")
    def _one_length(self) -> JobCreate:
        """Cross-field checks: one of steps or epochs, distinct devices, the method's own spec only."""
        self._check_mode()
        self._check_split()
        if self.mode == "independent" and (self.steps is None) == (self.epochs is None):
            raise ValueError("give exactly one of steps or epochs")
        if len(set(self.devices)) != len(self.devices):
            raise ValueError("devices must not repeat")
        if self.method == "lora" and self.lora is None:
            raise ValueError("method 'lora' needs a lora spec")
        if self.checkpoint_every is not None and self.method != "lora":
            raise ValueError(f"checkpoint_every: a {self.method} session cannot be checkpointed (LoRA only)")
        if self.checkpoint_every is not None and self.federated and self.federated.trunk_adapter == "shared":
            raise ValueError(
                'checkpoint_every: sessions on a shared trunk adapter (federated.trunk_adapter "shared") '
                "cannot be checkpointed: the adapter is the round's, stepped by every session"
            )
        self._check_offsite()
        if self.privacy is not None and self.privacy.withhold_gradients and self.trunk_lora:
            raise ValueError(WITHHELD_TRUNK)
        if self.method != "lora" and self.lora is not None:
            raise ValueError(f"method {self.method!r} trains selected weights, not LoRA: drop the lora spec")
        for method in SELECTION_SPECS:
            if self.method != method and getattr(self, method) is not None:
                raise ValueError(f"a {method} spec needs method {method!r}")
        return self

    def _check_offsite(self) -> None:
        if self.offsite is None:
            return
        if self.method != "lora" or self.mode != "independent":
            raise ValueError('offsite: an offsite job trains LoRA (method "lora") in mode "independent"')
        if self.split == "auto":
            raise ValueError('offsite: split "auto" plans a split against an edge; give device_layers')
        if self.trunk_lora:
            raise ValueError(
                "offsite: the emulator's trunk is not the model's, so no trunk adapter can be carried over: "
                "set trunk_lora false"
            )
        if self.checkpoint_every is not None:
            raise ValueError(
                "offsite: checkpoint_every is for split sessions (an offsite session has no edge)"
            )

    def _check_split(self) -> None:
        if self.split == "manual":
            if self.device_layers is None:
                raise ValueError('device_layers is required (or split "auto")')
            return
        if self.method != "lora" or self.mode != "independent":
            raise ValueError(
                'split "auto" chooses a LoRA rank per device: it needs method lora, mode independent'
            )

    @property
    def layers(self) -> tuple[int, int]:
        """(device_layers, head_layers) of a manual spec or a resolved auto one (`with_point`)."""
        if self.device_layers is None:
            raise InvalidArgument(
                'this spec has split "auto" and no plan point applied yet: no device_layers'
            )
        return self.device_layers, self.head_layers

    def with_point(self, point: PlanPoint) -> JobCreate:
        """The spec one device of an `auto` job runs: the point's split, rank, codec and precision."""
        assert self.lora is not None  # split auto needs method lora (checked above)
        lora = self.lora.model_copy(update={"r": point.lora_r, "lora_alpha": float(2 * point.lora_r)})
        return self.model_copy(
            update={
                "device_layers": point.device_layers,
                "head_layers": point.head_layers,
                "lora": lora,
                "codec": point.codec,
                "precision": point.precision,
            }
        )

    def _check_mode(self) -> None:
        if self.mode == "independent":
            if self.federated is not None:
                raise ValueError('a federated spec needs mode "federated"')
            return
        if self.federated is None:
            raise ValueError('mode "federated" needs a federated spec (rounds, local_steps or local_epochs)')
        if self.steps is not None or self.epochs is not None:
            raise ValueError(
                "a federated job counts its training per round: federated.local_steps or "
                "federated.local_epochs, not steps or epochs"
            )
        if self.method != "lora":
            raise ValueError("a federated job averages LoRA adapters: method must be 'lora'")
        wanted, devices = self.federated.min_devices, len(self.devices)
        if wanted > devices:
            raise ValueError(f"federated.min_devices ({wanted}) exceeds the job's {devices} devices")
        if self.federated.trunk_adapter == "shared" and not self.trunk_lora:
            raise ValueError(
                'federated.trunk_adapter "shared" shares the trunk\'s LoRA: it needs trunk_lora true'
            )

    def selection_spec(self) -> SelectionSpec | None:
        """The job's selection-method member (its defaults when absent); None for a LoRA job."""
        if self.method == "lora":
            return None
        member = getattr(self, self.method)
        return member if member is not None else SELECTION_SPECS[self.method]()


class Assignment(Strict):
    """GET /v1/assignments/next: the session to run, where, with which token and spec."""

    session_id: str
    job_id: str
    edge_address: str = Field(description='the edge to open the session on; "" for an offsite job (no edge)')
    token: str = Field(repr=False, description='signed session token for the edge; "" for an offsite job')
    spec: JobCreate
    round: StrictInt | None = Field(None, ge=0, description="federated jobs: the round this session trains")
    initial_adapter: bool = Field(
        False, description="federated jobs: start from GET /v1/sessions/{id}/initial-adapter"
    )
    plan_point: PlanPoint | None = Field(
        None,
        description='split "auto": the front point chosen for this device\'s class (spec has it applied)',
    )
    shared_trunk_adapter: str | None = Field(
        None,
        max_length=200,
        description='federated jobs with trunk_adapter "shared": the key of the edge\'s shared trunk adapter '
        "the session joins (OpenSession.shared_adapter)",
    )
