"""LoRA configs that cross the wire: the subset of peft's LoraConfig that is safe on a shared trunk.

The edge applies the device's LoRA config to its trunk blocks. Only options that leave the shared,
frozen trunk weights untouched are accepted there: no trainable biases, no initialisations that
rewrite base weights (PiSSA, OLoRA, LoftQ, ...), no `modules_to_save`.
"""

from __future__ import annotations

import json
from typing import Any

from peft import LoraConfig

from splitft.errors import InvalidArgument

_TRUNK_FIELDS = (
    "r",
    "lora_alpha",
    "lora_dropout",
    "target_modules",
    "exclude_modules",
    "fan_in_fan_out",
    "bias",
    "use_rslora",
    "use_dora",
    "init_lora_weights",
    "layers_to_transform",
    "layers_pattern",
    "rank_pattern",
    "alpha_pattern",
)
_SAFE_INITS = (True, False, "gaussian")
MAX_RANK = 4096


def _jsonable(value: Any) -> Any:
    if isinstance(value, (set, frozenset, tuple)):
        return sorted(value) if isinstance(value, (set, frozenset)) else list(value)
    return value


def trunk_lora_json(config: LoraConfig) -> str:
    """The trunk's share of a device LoRA config, as JSON; raises if it is unsafe for a shared trunk."""
    fields = {name: _jsonable(getattr(config, name)) for name in _TRUNK_FIELDS}
    check_trunk_fields(fields)
    return json.dumps(fields, sort_keys=True)


def trunk_lora_from_json(text: str) -> LoraConfig:
    """Parse and validate a trunk LoRA config sent by a device."""
    try:
        fields = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"lora_config_json is not valid JSON: {exc}") from exc
    if not isinstance(fields, dict):
        raise InvalidArgument("lora_config_json must be a JSON object")
    unknown = sorted(set(fields) - set(_TRUNK_FIELDS))
    if unknown:
        raise InvalidArgument(
            f"lora_config_json has unsupported fields {unknown}; allowed: {list(_TRUNK_FIELDS)}"
        )
    check_trunk_fields(fields)
    try:
        return LoraConfig(**fields)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"invalid LoRA config: {exc}") from exc


def check_trunk_fields(fields: dict[str, Any]) -> None:
    r = fields.get("r", 8)
    if not isinstance(r, int) or isinstance(r, bool) or not 1 <= r <= MAX_RANK:
        raise InvalidArgument(f"LoRA rank r must be an int in [1, {MAX_RANK}], got {r!r}")
    alpha = fields.get("lora_alpha", 8)
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or alpha <= 0:
        raise InvalidArgument(f"lora_alpha must be a positive number, got {alpha!r}")
    dropout = fields.get("lora_dropout", 0.0)
    if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise InvalidArgument(f"lora_dropout must be in [0, 1), got {dropout!r}")
    if fields.get("bias", "none") != "none":
        raise InvalidArgument(
            "bias must be 'none' when the trunk trains LoRA: trunk biases are shared and frozen"
        )
    if fields.get("init_lora_weights", True) not in _SAFE_INITS:
        raise InvalidArgument(
            f"init_lora_weights={fields.get('init_lora_weights')!r} rewrites base weights; the shared trunk "
            f"accepts only {list(_SAFE_INITS)}"
        )
    targets = fields.get("target_modules")
    if not targets or not isinstance(targets, (str, list)):
        raise InvalidArgument("target_modules must name the modules to adapt (a list of names or a regex)")
    if isinstance(targets, list) and not all(isinstance(t, str) and t for t in targets):
        raise InvalidArgument("target_modules must be non-empty strings")
