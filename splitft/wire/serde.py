"""Everything JSON inside data-plane messages, one `x_to_json` / `x_from_json` pair per field.

The proto carries a few structured values as JSON strings (`lora_config_json`, `hparams_json`);
this module is the one place that writes and parses them, and the one home of the contract
facts both sides and the control plane share (`EDGE_OPTIMIZERS`). Parsing checks the JSON shape
and raises `InvalidArgument` naming the field; what a value MEANS (is this LoRA config safe for a
shared trunk?) is checked by its owner (`splitft.model.lora`).

Torch-free on purpose: the control plane imports `EDGE_OPTIMIZERS` from here. Method JSON
(`method_json`) lives with the methods (`splitft.methods`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, Literal, get_args

from splitft.errors import InvalidArgument

# The optimizers the edge can run for a trunk adapter (names of `torch.optim` classes). The REST
# job spec, the agent, the device SDK and the edge all read this one declaration.
EdgeOptimizer = Literal["AdamW", "Adam", "SGD"]
EDGE_OPTIMIZERS: tuple[str, ...] = get_args(EdgeOptimizer)


def _object_from_json(text: str, field: str) -> dict[str, Any]:
    """Parse `text` as a JSON object or raise InvalidArgument naming the proto `field`."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"{field} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise InvalidArgument(f"{field} must be a JSON object")
    return value


def lora_to_json(fields: Mapping[str, Any]) -> str:
    """`lora_config_json`: the trunk's LoRA fields (already checked by `splitft.model.lora`)."""
    return json.dumps(dict(fields), sort_keys=True)


def lora_from_json(text: str) -> dict[str, Any]:
    """The fields of a `lora_config_json` object; `splitft.model.lora` validates their values."""
    return _object_from_json(text, "lora_config_json")


def hparams_to_json(hparams: Mapping[str, Any]) -> str:
    """`hparams_json`: optimizer hyper-parameters (numbers, bools, lists of numbers)."""
    return json.dumps(dict(hparams))


def hparams_from_json(text: str) -> dict[str, Any]:
    """Optimizer hyper-parameters from `hparams_json` ("" means none): every value a finite number,
    a bool or a list of numbers. Whether a key fits the optimizer is the optimizer's check."""
    if not text:
        return {}
    hparams = _object_from_json(text, "hparams_json")
    for key, value in hparams.items():
        ok = isinstance(value, (int, float, bool)) or (
            isinstance(value, list) and all(isinstance(v, (int, float)) for v in value)
        )
        if not ok:
            raise InvalidArgument(f"hyper-parameter {key!r} must be a number, bool or list of numbers")
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidArgument(f"hyper-parameter {key!r} must be finite")
    return hparams


def _group_value_ok(value: Any) -> bool:
    if value is None or isinstance(value, bool):
        return True
    if isinstance(value, (int, float)):
        return math.isfinite(value)
    return isinstance(value, list) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value
    )


def optimizer_groups_to_json(groups: list[Mapping[str, Any]]) -> str:
    """`optimizer_groups_json` (a session checkpoint): torch's `param_groups` without "params";
    every value a finite number, a bool, null or a list of numbers (tuples become lists)."""
    out = []
    for group in groups:
        plain = {k: list(v) if isinstance(v, tuple) else v for k, v in group.items() if k != "params"}
        bad = sorted(k for k, v in plain.items() if not _group_value_ok(v))
        if bad:
            raise InvalidArgument(f"optimizer hyper-parameters {bad} cannot be checkpointed as JSON")
        out.append(plain)
    return json.dumps(out)


def optimizer_groups_from_json(text: str) -> list[dict[str, Any]]:
    """The param groups of an `optimizer_groups_json`: a non-empty JSON list of objects whose values
    `optimizer_groups_to_json` allows; InvalidArgument otherwise."""
    try:
        groups = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"optimizer_groups_json is not valid JSON: {exc}") from exc
    if not isinstance(groups, list) or not groups or not all(isinstance(g, dict) for g in groups):
        raise InvalidArgument("optimizer_groups_json must be a non-empty JSON list of objects")
    for group in groups:
        bad = sorted(k for k, v in group.items() if k == "params" or not _group_value_ok(v))
        if bad:
            raise InvalidArgument(f"optimizer_groups_json: invalid entries {bad}")
    return groups
