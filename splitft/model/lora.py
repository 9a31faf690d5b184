"""LoRA configs that cross the wire: the subset of peft's LoraConfig that is safe on a shared trunk.

The edge applies the device's LoRA config to its trunk blocks. Only options that leave the shared,
frozen trunk weights untouched are accepted there: no trainable biases, no initialisations that
rewrite base weights (PiSSA, OLoRA, LoftQ, ...), no `modules_to_save`.
"""

from __future__ import annotations

import math
import re
from typing import Any

from peft import LoraConfig

from splitft.errors import InvalidArgument
from splitft.wire.serde import lora_from_json, lora_to_json

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
# Fields peft evaluates as regexes: refused for the shared trunk (see `_check_no_patterns`).
_PATTERN_FIELDS = ("layers_pattern", "rank_pattern", "alpha_pattern")
MAX_MODULE_NAMES = 256
MAX_MODULE_NAME_LENGTH = 128
_MODULE_NAME = re.compile(rf"[A-Za-z0-9_.]{{1,{MAX_MODULE_NAME_LENGTH}}}")


def _jsonable(value: Any) -> Any:
    if isinstance(value, (set, frozenset, tuple)):
        return sorted(value) if isinstance(value, (set, frozenset)) else list(value)
    return value


def trunk_lora_json(config: LoraConfig) -> str:
    """The trunk's share of a device LoRA config, as JSON; raises if it is unsafe for a shared trunk."""
    fields = {name: _jsonable(getattr(config, name)) for name in _TRUNK_FIELDS}
    check_trunk_fields(fields)
    return lora_to_json(fields)


def trunk_lora_from_json(text: str) -> LoraConfig:
    """Parse and validate a trunk LoRA config sent by a device."""
    fields = lora_from_json(text)
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
    """InvalidArgument unless `fields` are safe for a shared trunk (the device checks before sending,
    the edge on receipt: one function for both)."""
    _check_scalars(fields)
    _check_no_patterns(fields)
    targets = fields.get("target_modules")
    if isinstance(targets, str):
        raise InvalidArgument(
            "target_modules must be a list of module names, not a string: peft reads a string as a regex"
        )
    check_module_names("target_modules", targets, required=True)
    excludes = fields.get("exclude_modules")
    if isinstance(excludes, str):
        raise InvalidArgument(
            "exclude_modules must be a list of module names, not a string: peft reads a string as a regex"
        )
    check_module_names("exclude_modules", excludes, required=False)
    layers = fields.get("layers_to_transform")
    if isinstance(layers, int) and not isinstance(layers, bool):
        layers = [layers]
    if layers is not None and (
        not isinstance(layers, list)
        or len(layers) > MAX_MODULE_NAMES
        or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < 1_000_000 for i in layers)
    ):
        raise InvalidArgument("layers_to_transform must be a layer index or a list of layer indices")


def _check_scalars(fields: dict[str, Any]) -> None:
    r = fields.get("r", 8)
    if not isinstance(r, int) or isinstance(r, bool) or not 1 <= r <= MAX_RANK:
        raise InvalidArgument(f"LoRA rank r must be an int in [1, {MAX_RANK}], got {r!r}")
    alpha = fields.get("lora_alpha", 8)
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not 0 < alpha < math.inf:
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


def _check_no_patterns(fields: dict[str, Any]) -> None:
    # peft evaluates these with Python's backtracking `re` (a peer's pattern could stall the edge)
    # and rank_pattern/alpha_pattern would also get past MAX_RANK: the shared trunk refuses them.
    for name in _PATTERN_FIELDS:
        if fields.get(name) not in (None, {}, [], ""):
            raise InvalidArgument(
                f"{name} is not accepted for the trunk adapter: peft reads it as a regex; "
                "use one rank and alpha, and target_modules as a list of module names"
            )


def check_module_names(field: str, names: Any, *, required: bool) -> None:
    """InvalidArgument unless `names` is a list of plain module names (matched exactly or as a dotted
    suffix, never as a regex)."""
    if names is None and not required:
        return
    if not isinstance(names, list) or (required and not names):
        raise InvalidArgument(f"{field} must be a non-empty list of module names")
    if len(names) > MAX_MODULE_NAMES:
        raise InvalidArgument(f"{field} has {len(names)} names; at most {MAX_MODULE_NAMES}")
    for name in names:
        if not isinstance(name, str) or not _MODULE_NAME.fullmatch(name):
            shown = name[:40] if isinstance(name, str) else name
            raise InvalidArgument(
                f"{field} entries must be module names of 1-{MAX_MODULE_NAME_LENGTH} characters of "
                f"[A-Za-z0-9_.], got {shown!r}"
            )
