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
    """Backward budgets of one training step and the channel ratios TinyTrain may pick from."""

    # Bytes for weight gradients and saved inputs of the trained layers; math.inf: no limit.
    memory_budget_bytes: float
    # Backward multiply-accumulates per step; math.inf: no limit.
    compute_budget_macs: float
    # Fractions of a layer's output channels that may be trained, tried largest first.
    channel_ratios: tuple[float, ...] = (1.0, 0.5, 0.25, 0.125)
    # Module-name filters (exact or dotted suffix); None: every Linear/Conv1D in the blocks.
    target_modules: list[str] | None = None
    # Size of one gradient/activation element: 4 for fp32 training, 2 for fp16/bf16.
    bytes_per_element: int = 4
    # Tokens through every layer per step; None: what each layer saw per support-set batch.
    tokens_per_step: int | None = None

    def __post_init__(self) -> None:
        check_budget("memory_budget_bytes", self.memory_budget_bytes)
        check_budget("compute_budget_macs", self.compute_budget_macs)
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
)
_BUDGETS = ("memory_budget_bytes", "compute_budget_macs")


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
