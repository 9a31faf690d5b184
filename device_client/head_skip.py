"""`privacy.head_skip`: the blocks after the trunk also read a private linear map of h_k (as the
device computed it, before clip and noise), added to the trunk's output by the trunk entry.

The map starts at zero, so the split model starts exactly as without it. It never crosses the wire:
`save_adapter` writes it beside the peft adapter (`head_skip.safetensors`), checkpoints carry it as
one of the device's trainable parameters, and a federated round never aggregates it (each round's
session starts its map at zero). With withheld gradients it is the task's only path back to the
device's first blocks (docs/privacy.md).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from splitft.errors import InvalidArgument
from splitft.privacy.config import PrivacyConfig

HEAD_SKIP_FILE = "head_skip.safetensors"  # beside a saved peft adapter

logger = logging.getLogger(__name__)


class HeadSkip(nn.Linear):
    """`privacy.head_skip`: a private linear map of h_k that the split model adds to the trunk's
    output. Zero at the start, so the model starts exactly as without it; float32 like the adapters,
    whatever the device spans compute in."""

    def __init__(self, hidden: int, device: torch.device) -> None:
        super().__init__(hidden, hidden, bias=False, device=device, dtype=torch.float32)
        nn.init.zeros_(self.weight)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return super().forward(hidden.to(self.weight.dtype)).to(hidden.dtype)


def attach_head_skip(
    entry: nn.Module, config: PrivacyConfig, model_config: Any, device: torch.device
) -> None:
    """With `config.head_skip`, a zero map of h_k set as `entry.skip` (the trunk entry adds it to the
    trunk's output), after peft has wrapped the model (peft freezes what it finds: this map trains)."""
    if config.head_skip:
        entry.skip = HeadSkip(int(model_config.hidden_size), device)


def head_skip_of(model: nn.Module) -> HeadSkip | None:
    """The head skip's map inside `model` (None without one)."""
    return next((module for module in model.modules() if isinstance(module, HeadSkip)), None)


def save_head_skip(skip: HeadSkip | None, folder: Path) -> None:
    """Write the head skip's map beside the peft adapter in `folder` (nothing without a skip)."""
    if skip is not None:
        save_file({"weight": skip.weight.detach().to("cpu").contiguous()}, str(folder / HEAD_SKIP_FILE))


def load_head_skip(skip: HeadSkip | None, folder: Path) -> None:
    """Load the head skip's map saved in the adapter directory `folder`. An adapter trained with a
    skip needs a model that has one (else its predictions would silently change). A model with a skip
    keeps its map when `folder` has none: a federated round's global adapter is peft's alone, and
    the device's map is not aggregated."""
    path = folder / HEAD_SKIP_FILE
    if skip is None:
        if path.is_file():
            raise InvalidArgument(
                f"{folder} was trained with privacy.head_skip ({HEAD_SKIP_FILE}): open the model with "
                "privacy head_skip true to use it"
            )
        return
    if not path.is_file():
        logger.info("%s has no %s: the head skip keeps its own map", folder, HEAD_SKIP_FILE)
        return
    weight = load_file(str(path)).get("weight")
    if weight is None or weight.shape != skip.weight.shape:
        shape = None if weight is None else list(weight.shape)
        raise InvalidArgument(
            f"{path}: the head skip's weight must be {list(skip.weight.shape)}, got {shape}"
        )
    with torch.no_grad():
        skip.weight.copy_(weight.to(skip.weight.device, skip.weight.dtype))
