"""Selection-method configs as they cross the wire (OpenSession's `method_json`).

Only the trunk's share crosses: what the edge needs to score its own layers. TaskEdge's edge
selects its own entries (the same k per row as the device); TinyTrain's budgets stay on the device,
which gathers every layer's potential and makes the one global choice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from splitft.errors import InvalidArgument
from splitft.methods.common import checked_filters
from splitft.methods.taskedge import TaskEdgeConfig
from splitft.methods.tinytrain import TinyTrainConfig

SPLIT_METHODS = ("taskedge", "tinytrain")  # selection methods that run across the split


@dataclass(frozen=True)
class TinyTrainTrunk:
    """The trunk's share of a TinyTrain config: which layers to measure (the budgets stay on the device)."""

    target_modules: list[str] | None = None


TrunkMethod = TaskEdgeConfig | TinyTrainTrunk


def method_to_json(config: TaskEdgeConfig | TinyTrainConfig) -> str:
    """The trunk's share of a method config, as `method_json`."""
    if isinstance(config, TaskEdgeConfig):
        return json.dumps(
            {
                "method": "taskedge",
                "target_modules": config.target_modules,
                "n_m": list(config.n_m) if config.n_m else None,
            }
        )
    if isinstance(config, TinyTrainConfig):
        return json.dumps({"method": "tinytrain", "target_modules": config.target_modules})
    raise InvalidArgument(
        f"method {type(config).__name__} cannot run across the split; supported: {SPLIT_METHODS}"
    )


_FIELDS = {"taskedge": {"target_modules", "n_m"}, "tinytrain": {"target_modules"}}


def method_from_json(text: str) -> TrunkMethod:
    """Parse and validate a device's method config; InvalidArgument names what is wrong."""
    try:
        fields: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"method_json is not valid JSON: {exc}") from None
    if not isinstance(fields, dict):
        raise InvalidArgument("method_json must be a JSON object")
    method = fields.pop("method", None)
    if method not in SPLIT_METHODS:
        raise InvalidArgument(
            f"method {method!r} is not supported across the split; supported: {SPLIT_METHODS}"
        )
    unknown = sorted(set(fields) - _FIELDS[method])
    if unknown:
        raise InvalidArgument(f"method_json has unsupported fields {unknown} for {method}")
    targets = fields.get("target_modules")
    if method == "tinytrain":
        return TinyTrainTrunk(checked_filters(targets) if targets is not None else None)
    n_m = fields.get("n_m")
    return TaskEdgeConfig(target_modules=targets, n_m=tuple(n_m) if n_m else None)
