"""Plug an adapter trained against an emulator into the full model: rename, drop, and describe it.

peft names an adapter tensor by its module path (`base_model.model.model.layers.3.self_attn.q_proj.
lora_A.weight`). Tensors of the device blocks keep their index, those of the head blocks move from
the emulator's numbering to the full model's, those of the emulator's trunk blocks (a trunk adapter
trained offsite, if any) are dropped: they belong to blocks the full model does not have. Tensors
outside the blocks (a classifier in `modules_to_save`, a pooler) are kept as they are.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping

import torch
from peft import LoraConfig

from splitft.emulator.layout import EmulatorLayout


def _block_index(blocks_path: str) -> re.Pattern[str]:
    return re.compile(f"(^|\\.){re.escape(blocks_path)}\\.(\\d+)\\.")


def plugin_state(
    state: Mapping[str, torch.Tensor], layout: EmulatorLayout, blocks_path: str
) -> dict[str, torch.Tensor]:
    """`state` (peft's names, emulator numbering) renamed for the full model, trunk tensors dropped."""
    pattern = _block_index(blocks_path)
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        match = pattern.search(key)
        if match is None:
            out[key] = tensor
            continue
        index = int(match.group(2))
        if layout.is_trunk(index):
            continue
        full = layout.full_index(index)
        out[f"{key[: match.start(2)]}{full}{key[match.end(2) :]}"] = tensor
    return out


def trunk_module_names(targeted: Iterable[str], blocks_path: str, indices: Iterable[int]) -> list[str]:
    """The full names, in blocks `indices`, of the in-block modules `targeted` (names relative to a
    block, e.g. `self_attn.q_proj`): what `exclude_modules` lists so no adapter goes there."""
    relative = sorted(set(targeted))
    return [f"{blocks_path}.{i}.{name}" for i in indices for name in relative]


def relative_targets(module_names: Iterable[str], blocks_path: str) -> list[str]:
    """Of the module names peft wrapped, the in-block part of those inside a block (deduplicated)."""
    pattern = _block_index(blocks_path)
    out: set[str] = set()
    for name in module_names:
        match = pattern.search(name)
        if match is not None:
            out.add(name[match.end() :])
    return sorted(out)


def plugin_config(
    config: LoraConfig, layout: EmulatorLayout, blocks_path: str, targeted: Iterable[str], base_model: str
) -> LoraConfig:
    """The adapter config for the full model: the same LoRA, with the full model's trunk blocks
    excluded (no fresh, untrained adapter appears there), based on the full model's directory."""
    out = copy.deepcopy(config)
    trunk = range(layout.device_layers, layout.num_layers - layout.head_layers)
    exclude = trunk_module_names(targeted, blocks_path, trunk)
    out.exclude_modules = sorted(set(_as_list(config.exclude_modules)) | set(exclude)) or None
    out.base_model_name_or_path = base_model
    out.inference_mode = True
    return out


def _as_list(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]  # type: ignore[attr-defined]
