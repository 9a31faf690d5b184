"""Selection-method configs as they cross the wire (OpenSession's `method_json`)."""

from __future__ import annotations

import json
from typing import Any

from splitft.errors import InvalidArgument
from splitft.methods.taskedge import TaskEdgeConfig

SPLIT_METHODS = ("taskedge",)  # selection methods that run across the split today


def method_to_json(config: TaskEdgeConfig) -> str:
    """The trunk's share of a method config: what the edge needs to score and select its layers."""
    if not isinstance(config, TaskEdgeConfig):
        raise InvalidArgument(
            f"method {type(config).__name__} cannot run across the split yet; supported: {SPLIT_METHODS}"
        )
    return json.dumps(
        {
            "method": "taskedge",
            "target_modules": config.target_modules,
            "n_m": list(config.n_m) if config.n_m else None,
        }
    )


def method_from_json(text: str) -> TaskEdgeConfig:
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
    unknown = sorted(set(fields) - {"target_modules", "n_m"})
    if unknown:
        raise InvalidArgument(f"method_json has unsupported fields {unknown}")
    n_m = fields.get("n_m")
    return TaskEdgeConfig(target_modules=fields.get("target_modules"), n_m=tuple(n_m) if n_m else None)
