"""TinyTrain's config, torch-free: the dataclass, its checks, and its JSON forms (whole, and wire share).

JSON has no infinity: a budget of `math.inf` (no limit) is written as null.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from splitft.errors import InvalidArgument
from splitft.methods.checks import check_budget, check_fields, check_positive_int, checked_filters

NAME = "tinytrain"


@dataclass
class TinyTrainConfig:
    """Budgets of one training step and the channel ratios TinyTrain may pick from.

    The memory budgets bound what a training step allocates (the cost model in `cost.py`: the
    trained rows' gradients and AdamW state, their inputs, and the activations backward needs to
    reach the earliest trained layer); the compute budgets bound backward MACs. Across a split the
    device's budgets count only the device's side; the edge's budgets (no limit by default) count
    the trunk's layers.
    """

    # The device's training-step bytes; math.inf: no limit.
    memory_budget_bytes: float
    # The device's backward multiply-accumulates per step; math.inf: no limit.
    compute_budget_macs: float
    # Fractions of a layer's output channels that may be trained, tried largest first.
    channel_ratios: tuple[float, ...] = (1.0, 0.5, 0.25, 0.125)
    # Module-name filters (exact or dotted suffix); None: every Linear/Conv1D in the blocks.
    target_modules: list[str] | None = None
    # Size of one gradient/activation element: 4 for fp32 training, 2 for fp16/bf16.
    bytes_per_element: int = 4
    # Tokens through every layer per step; None: what each layer saw per support-set batch.
    tokens_per_step: int | None = None
    # Across a split: the trunk's selected state and inputs (bytes) and its backward MACs.
    edge_memory_budget_bytes: float = math.inf
    edge_compute_budget_macs: float = math.inf

    def __post_init__(self) -> None:
        for name in _BUDGETS:
            check_budget(name, getattr(self, name))
        self.channel_ratios = checked_ratios(self.channel_ratios)
        if self.target_modules is not None:
            self.target_modules = checked_filters(self.target_modules)
        check_positive_int("bytes_per_element", self.bytes_per_element)
        if self.tokens_per_step is not None:
            check_positive_int("tokens_per_step", self.tokens_per_step)


@dataclass(frozen=True)
class TinyTrainTrunk:
    """The trunk's share of a TinyTrain config: which layers to measure (the budgets stay on the device)."""

    target_modules: list[str] | None = None


def checked_ratios(ratios: Any) -> tuple[float, ...]:
    """Channel ratios, validated (distinct, each in (0, 1]) and sorted largest first."""
    if isinstance(ratios, (str, bytes, dict)) or not hasattr(ratios, "__iter__"):
        raise InvalidArgument(f"channel_ratios must be a list of numbers, got {ratios!r}")
    values = tuple(ratios)
    if not values:
        raise InvalidArgument("channel_ratios must not be empty")
    for ratio in values:
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
            raise InvalidArgument(f"every channel ratio must be in (0, 1], got {ratio!r}")
    if len(set(values)) != len(values):
        raise InvalidArgument(f"channel_ratios must be distinct, got {values}")
    return tuple(sorted((float(r) for r in values), reverse=True))


_FIELDS = (
    "memory_budget_bytes",
    "compute_budget_macs",
    "channel_ratios",
    "target_modules",
    "bytes_per_element",
    "tokens_per_step",
    "edge_memory_budget_bytes",
    "edge_compute_budget_macs",
)
_BUDGETS = (
    "memory_budget_bytes",
    "compute_budget_macs",
    "edge_memory_budget_bytes",
    "edge_compute_budget_macs",
)
# A job that names no memory budget gets a share of its device's memory (devices declare none at
# enrollment, so the job's `device_memory_bytes` does, with this default: a small edge device).
DEFAULT_DEVICE_MEMORY_BYTES = 512 * 1024 * 1024
DEVICE_MEMORY_SHARE = 0.25


def default_memory_budget(device_memory_bytes: int | None) -> float:
    """The training-step budget a job without one gets: a quarter of the device's memory."""
    memory = DEFAULT_DEVICE_MEMORY_BYTES if device_memory_bytes is None else device_memory_bytes
    return float(memory) * DEVICE_MEMORY_SHARE


def config_to_json(config: TinyTrainConfig) -> dict[str, Any]:
    """The whole config as a JSON object; an unlimited budget is null."""
    fields: dict[str, Any] = {name: getattr(config, name) for name in _FIELDS}
    for name in _BUDGETS:
        fields[name] = None if math.isinf(fields[name]) else fields[name]
    fields["channel_ratios"] = list(config.channel_ratios)
    return fields


def config_from_json(fields: dict[str, Any]) -> TinyTrainConfig:
    """A config from a JSON object; a missing or null budget is no limit (`math.inf`)."""
    check_fields(fields, _FIELDS, "a tinytrain config")
    values = dict(fields)
    for name in _BUDGETS:
        values[name] = math.inf if values.get(name) is None else values[name]
    if "channel_ratios" in values:
        values["channel_ratios"] = checked_ratios(values["channel_ratios"])
    return TinyTrainConfig(**values)


def to_wire(config: TinyTrainConfig) -> dict[str, Any]:
    """The trunk's share: only which layers to measure."""
    return {"target_modules": config.target_modules}


def from_wire(fields: dict[str, Any]) -> TinyTrainTrunk:
    """The trunk's config from a device's `method_json` fields."""
    check_fields(fields, ("target_modules",), f"method_json for {NAME}")
    targets = fields.get("target_modules")
    return TinyTrainTrunk(checked_filters(targets) if targets is not None else None)
