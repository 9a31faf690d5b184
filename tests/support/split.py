"""The split model most system tests train: the tiny Llama, one block on the device before the trunk
and one after it, LoRA on both sides. One factory instead of a copy per test file."""

from __future__ import annotations

from typing import Any

import torch

from device_client import EdgeConnection, SplitModel
from splitft.testing.tiny import TinyModel, lora_config_for


def split_llama(
    tiny: TinyModel, conn: EdgeConnection, *, seed: int | None = None, **overrides: Any
) -> SplitModel:
    """Open a session for the tiny Llama on `conn`; `seed` seeds torch first (adapter init);
    `overrides` replace any `from_pretrained` argument (for example `trunk_lora=False`)."""
    if seed is not None:
        torch.manual_seed(seed)
    arguments: dict[str, Any] = {
        "edge": conn,
        "model": "llama",
        "device_layers": 1,
        "head_layers": 1,
        "lora_config": lora_config_for("llama"),
    }
    arguments.update(overrides)
    return SplitModel.from_pretrained(tiny.path, **arguments)
