"""One session's edge memory, estimated from its model's measured profile: torch-free, so the edge
(admission, `edge_server.memory`) and the control plane (placement, `splitft_control.scheduler`)
compute the same number.

A session holds, beyond the frozen trunk every session shares:

* state: its trainable parameters, their gradients and the optimizer's slots (AdamW and Adam keep
  2 per parameter, 3 with `amsgrad`; SGD 1 with momentum, else 0; AdamW until ConfigureOptimizer
  names another), `parameters x dtype bytes x (2 + slots)`;
* kept graphs: what autograd saves in a training forward until its backward, per row
  `forward(T) + blocks x (block(T) + adapter(T))`, where `forward` and `block` are the
  profile's measured per-token and per-token-squared terms (attention probabilities with dropout
  grow with T^2) and `adapter` what the session's LoRA adds per token and block:

  - without LoRA dropout, each distinct input of the targeted linears (q, k and v share one) unless
    the frozen graph keeps it already, plus the rank-r output of `lora_A`;
  - with LoRA dropout, per target its dropout noise and dropped input (2 x in_features; on CPU,
    an upper bound where dropout keeps a bool mask) plus the rank-r output;
  - DoRA: also twice the target's output per token, and per forward what its weight norm keeps
    (an [in, in] identity through the LoRA path, its [in, r] image, the norm).

A session is admitted with its kept graphs at its batch shape (one batch pending: the SDK's
micro-batches of one step add up to the batch), `DEFAULT_BATCH_SIZE x DEFAULT_SEQUENCE_LENGTH`
when the device gives none.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from splitft.errors import InvalidArgument
from splitft.memory.units import format_bytes

DEFAULT_BATCH_SIZE = 16  # rows per batch when OpenSession gives none (the job spec's default)
DEFAULT_SEQUENCE_LENGTH = 128  # tokens per row likewise (the job spec's default max_length)
DEFAULT_LORA_RANK = 8  # a model's default session: LoRA of this rank on every block linear
OPTIMIZER_SLOTS = {"AdamW": 2, "Adam": 2, "SGD": 0}  # state tensors per parameter (see optimizer_slots)


class BlockLinear(BaseModel):
    """One linear layer of a trunk block, as the edge measured it (names relative to the block)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=200)
    in_features: int = Field(ge=1, le=1 << 24)
    out_features: int = Field(ge=1, le=1 << 24)
    input_group: int = Field(ge=0, le=1 << 16, description="linears reading the same input tensor share it")
    input_saved: bool = Field(description="the frozen trunk's graph keeps this input already")


class MemoryProfile(BaseModel):
    """What one served model's training forward keeps, measured by the edge when it loads the model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_layers: int = Field(ge=1, le=100_000, description="blocks of the whole model")
    dtype_bytes: int = Field(ge=1, le=16, description="bytes per element of the trunk's parameters")
    forward_token: float = Field(
        ge=0, allow_inf_nan=False, description="kept bytes per row and token outside the blocks"
    )
    forward_token2: float = Field(
        ge=0, allow_inf_nan=False, description="kept bytes per row and token squared outside the blocks"
    )
    block_token: float = Field(
        ge=0, allow_inf_nan=False, description="kept bytes per row and token in one trunk block"
    )
    block_token2: float = Field(
        ge=0, allow_inf_nan=False, description="kept bytes per row and token squared in one block"
    )
    linears: list[BlockLinear] = Field(default_factory=list, max_length=256)


@dataclass(frozen=True)
class TrunkAdapter:
    """What a session trains on the trunk, as far as its memory goes."""

    kind: Literal["none", "lora", "selection"] = "none"
    r: int = 0
    target_modules: tuple[str, ...] | None = None  # None: every block linear
    dropout: float = 0.0
    use_dora: bool = False

    @classmethod
    def lora(
        cls, r: int, target_modules: Sequence[str] | None, dropout: float = 0.0, use_dora: bool = False
    ) -> TrunkAdapter:
        """A LoRA adapter of rank `r` on `target_modules` (peft's names; None: every block linear)."""
        targets = tuple(target_modules) if target_modules is not None else None
        return cls("lora", int(r), targets, float(dropout), bool(use_dora))

    @classmethod
    def selection(cls, target_modules: Sequence[str] | None) -> TrunkAdapter:
        """A selection method's sparse deltas on `target_modules` (charged when it selects)."""
        return cls("selection", 0, tuple(target_modules) if target_modules is not None else None)


@dataclass(frozen=True)
class SessionEstimate:
    """One session's estimated edge memory, by part."""

    state_bytes: int  # trainable parameters, gradients and optimizer slots
    graph_bytes: int  # kept graphs of one batch of the expected shape
    batch_size: int
    sequence_length: int

    @property
    def total(self) -> int:
        """Bytes the session is admitted with."""
        return self.state_bytes + self.graph_bytes

    def describe(self) -> str:
        """The parts, for messages: `adapter and optimizer state 1.0 MiB, kept graphs of a 16 x 128 ...`."""
        return (
            f"adapter and optimizer state {format_bytes(self.state_bytes)}, kept graphs of a "
            f"{self.batch_size} x {self.sequence_length} batch {format_bytes(self.graph_bytes)}"
        )


def _matches(name: str, filters: Sequence[str]) -> bool:
    # peft's rule for a list: a filter names a module exactly or as its last dotted components.
    return any(name == f or name.endswith("." + f) for f in filters)


def targets(profile: MemoryProfile, adapter: TrunkAdapter) -> list[BlockLinear]:
    """The block linears the adapter touches."""
    if adapter.kind == "none":
        return []
    if adapter.target_modules is None:
        return list(profile.linears)
    return [lin for lin in profile.linears if _matches(lin.name, adapter.target_modules)]


def adapter_parameters(profile: MemoryProfile, blocks: int, adapter: TrunkAdapter) -> int:
    """Trainable parameters of a LoRA adapter on `blocks` trunk blocks (0 for none; a selection's
    are charged when it selects, since only then is their number known)."""
    if adapter.kind != "lora":
        return 0
    per_block = sum(
        adapter.r * (lin.in_features + lin.out_features) + (lin.out_features if adapter.use_dora else 0)
        for lin in targets(profile, adapter)
    )
    return blocks * per_block


def kept_token_bytes(profile: MemoryProfile, adapter: TrunkAdapter) -> float:
    """Bytes the adapter adds to a forward's kept graph per row, token and block."""
    chosen, size = targets(profile, adapter), profile.dtype_bytes
    if not chosen:
        return 0.0
    extra = adapter.r * len(chosen)  # lora_A's outputs, kept for lora_B
    if adapter.kind == "lora" and adapter.use_dora:
        extra += sum(2 * lin.out_features for lin in chosen)  # the base output again and the LoRA path's
    if adapter.kind == "lora" and adapter.dropout > 0:
        return float((extra + sum(2 * lin.in_features for lin in chosen)) * size)
    inputs = {lin.input_group: lin.in_features for lin in chosen if not lin.input_saved}
    return float((extra + sum(inputs.values())) * size)


def forward_fixed_bytes(profile: MemoryProfile, blocks: int, adapter: TrunkAdapter) -> int:
    """Bytes a forward keeps whatever its shape: DoRA's weight norms, per target an identity
    [in, in] through the LoRA path and its [in, r] image, and the norm."""
    if adapter.kind != "lora" or not adapter.use_dora:
        return 0
    per_block = sum(
        lin.in_features * (lin.in_features + adapter.r) + lin.out_features
        for lin in targets(profile, adapter)
    )
    return blocks * per_block * profile.dtype_bytes


def graph_bytes(
    profile: MemoryProfile, *, blocks: int, batch: int, tokens: int, adapter: TrunkAdapter
) -> int:
    """What one training forward of `batch` rows of `tokens` tokens keeps until its backward."""
    per_token = profile.block_token + kept_token_bytes(profile, adapter)
    per_row = (
        profile.forward_token * tokens
        + profile.forward_token2 * tokens**2
        + blocks * (per_token * tokens + profile.block_token2 * tokens**2)
    )
    return math.ceil(batch * per_row) + forward_fixed_bytes(profile, blocks, adapter)


def optimizer_slots(name: str = "AdamW", hparams: Mapping[str, Any] | None = None) -> int:
    """State tensors per parameter of the edge optimizer `name` with `hparams` (an unknown name
    counts as AdamW: whoever builds the optimizer refuses it)."""
    hparams = hparams or {}
    if name == "SGD":
        return 1 if hparams.get("momentum", 0) else 0
    return OPTIMIZER_SLOTS.get(name, OPTIMIZER_SLOTS["AdamW"]) + (1 if hparams.get("amsgrad") else 0)


# peft keeps LoRA weights in float32 on a bfloat16 or float16 trunk (`autocast_adapter_dtype`).
ADAPTER_DTYPE_BYTES = 4


def state_bytes(parameters: int, dtype_bytes: int, slots: int) -> int:
    """Bytes of `parameters` trainable values: the values, their gradients and `slots` optimizer states."""
    return parameters * dtype_bytes * (2 + slots)


def shared_adapter_bytes(parameters: int, dtype_bytes: int, slots: int) -> int:
    """Bytes of a shared trunk adapter of `parameters` values, counted once: the values and `slots`
    optimizer states (each session that steps it holds its own gradients)."""
    return parameters * dtype_bytes * (1 + slots)


def trunk_blocks(profile: MemoryProfile, device_layers: int, head_layers: int) -> int:
    """Trunk blocks of a split (InvalidArgument when the device keeps them all)."""
    blocks = profile.num_layers - device_layers - head_layers
    if device_layers < 1 or head_layers < 0 or blocks < 1:
        raise InvalidArgument(
            f"a split of {profile.num_layers} blocks with {device_layers} device and {head_layers} "
            "head blocks leaves no trunk"
        )
    return blocks


def estimate_session(
    profile: MemoryProfile,
    *,
    blocks: int,
    adapter: TrunkAdapter,
    batch_size: int = 0,
    sequence_length: int = 0,
    optimizer: str = "AdamW",
    joins_shared: bool = False,
) -> SessionEstimate:
    """The memory a session of `blocks` trunk blocks training `adapter` is admitted with, at its
    batch shape (0: the default shape). `joins_shared`: it joins a shared trunk adapter that exists
    already, so its state is its gradients alone (the adapter's values and optimizer slots are
    counted once, with the adapter: `shared_adapter_bytes`)."""
    batch = batch_size or DEFAULT_BATCH_SIZE
    tokens = sequence_length or DEFAULT_SEQUENCE_LENGTH
    parameters = adapter_parameters(profile, blocks, adapter)
    slots = optimizer_slots(optimizer)
    state = (
        parameters * ADAPTER_DTYPE_BYTES
        if joins_shared
        else state_bytes(parameters, ADAPTER_DTYPE_BYTES, slots)
    )
    return SessionEstimate(
        state_bytes=state,
        graph_bytes=graph_bytes(profile, blocks=blocks, batch=batch, tokens=tokens, adapter=adapter),
        batch_size=batch,
        sequence_length=tokens,
    )


def default_session(profile: MemoryProfile) -> SessionEstimate:
    """A model's default session, what per-model capacity counts: every trunk block (the device keeps
    one), LoRA of `DEFAULT_LORA_RANK` on every block linear, AdamW, the default batch shape."""
    adapter = TrunkAdapter.lora(DEFAULT_LORA_RANK, None)
    return estimate_session(profile, blocks=max(1, profile.num_layers - 1), adapter=adapter)
