"""Distil an emulator's kept trunk blocks against the full trunk (Offsite-Tuning's distillation).

Both models see the same batch; their embeddings and device blocks are the same weights, so the
trunk input h is the same in both. The loss is the normalized MSE of the trunk outputs,
||f_e(h) - f(h)||^2 / ||f(h)||^2 over the real (unpadded) tokens, and only the emulator's kept
trunk blocks train. Each forward stops at the trunk's last block: the head blocks and the head
(for a large vocabulary the costliest part) never run.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import cycle
from typing import Any

import torch
from torch import nn

from splitft.emulator.layout import EmulatorLayout
from splitft.errors import InvalidArgument
from splitft.model.families import Family

logger = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]


@dataclass(frozen=True)
class DistillConfig:
    steps: int
    lr: float = 1e-4
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or self.steps < 0:
            raise InvalidArgument(f"distill steps must be an int >= 0, got {self.steps!r}")
        if not self.lr > 0:
            raise InvalidArgument(f"distill lr must be > 0, got {self.lr!r}")


class _Stop(Exception):
    """Raised by the capture hook: the rest of the forward is not needed."""


@contextmanager
def _trunk_output(blocks: nn.ModuleList, last: int) -> Iterator[list[torch.Tensor]]:
    """Capture blocks[last]'s output (the trunk's) and stop the forward there."""
    captured: list[torch.Tensor] = []

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
        captured.append(output[0] if isinstance(output, tuple) else output)
        raise _Stop

    handle = blocks[last].register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


def trunk_output(root: nn.Module, family: Family, last: int, batch: Batch) -> torch.Tensor:
    """The output of block `last` of `root` for `batch` (inputs only; labels are not needed)."""
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "pixel_values")}
    with _trunk_output(family.blocks(root), last) as captured:
        try:
            root(**inputs)
        except _Stop:
            pass
    if not captured:
        raise InvalidArgument(f"block {last} never ran: the batch did not reach the trunk")
    return captured[0]


def normalized_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """||student - teacher||^2 / ||teacher||^2 over the positions `mask` marks (all when None)."""
    diff = (student - teacher).pow(2).sum(-1)
    norm = teacher.pow(2).sum(-1)
    if mask is not None and mask.shape == diff.shape:
        weights = mask.to(diff.dtype)
        diff, norm = diff * weights, norm * weights
    return diff.sum() / norm.sum().clamp_min(1e-12)


@torch.no_grad()
def evaluate_distance(
    full: nn.Module, emulator: nn.Module, family: Family, layout: EmulatorLayout, batches: Sequence[Batch]
) -> float:
    """Mean normalized MSE between the emulator's and the full model's trunk outputs on `batches`."""
    total = 0.0
    for batch in batches:
        teacher = trunk_output(full, family, layout.num_layers - layout.head_layers - 1, batch)
        student = trunk_output(emulator, family, layout.device_layers + layout.keep - 1, batch)
        total += float(normalized_mse(student, teacher, batch.get("attention_mask")))
    return total / max(1, len(batches))


def distill(
    full: nn.Module,
    emulator: nn.Module,
    family: Family,
    layout: EmulatorLayout,
    batches: Sequence[Batch],
    config: DistillConfig,
) -> list[float]:
    """Train the emulator's kept trunk blocks for `config.steps` steps over `batches` (cycled);
    returns the loss of each step. Both models are left in eval mode with no gradients."""
    if not batches:
        raise InvalidArgument("distillation needs at least one batch of data")
    torch.manual_seed(config.seed)
    full.eval().requires_grad_(False)
    emulator.eval().requires_grad_(False)
    blocks = family.blocks(emulator)
    trunk = [blocks[i] for i in range(layout.device_layers, layout.device_layers + layout.keep)]
    params = [p for block in trunk for p in block.parameters()]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    teacher_last = layout.num_layers - layout.head_layers - 1
    student_last = layout.device_layers + layout.keep - 1
    losses: list[float] = []
    for step, batch in zip(range(config.steps), cycle(batches), strict=False):
        with torch.no_grad():
            teacher = trunk_output(full, family, teacher_last, batch)
        loss = normalized_mse(
            trunk_output(emulator, family, student_last, batch), teacher, batch.get("attention_mask")
        )
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if step % 50 == 0:
            logger.info("distill step %d/%d: normalized MSE %.5f", step + 1, config.steps, losses[-1])
    emulator.requires_grad_(False)
    return losses
