"""What a training step allocates, with `bench memory`'s instrument (torch's allocator, through the
profiler's memory events).

Measured: the peak of the bytes torch's CPU allocator holds during `steps` training steps (forward,
backward, AdamW step, zero_grad) started from a fresh optimizer, minus the bytes it held when they
began. So it counts the gradients, AdamW's moments (created in step 1), the activations saved for
backward and every transient of the step, and not the weights, the trainable values themselves or
the batch, which were live before. Two steps: the first creates AdamW's state, the second shows the
steady peak (the state live from the start). Only the calling thread's allocations are seen (torch's
intra-op workers allocate nothing on CPU here).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from splitft.bench.memory_probes import AllocationTracker

StepLoss = Callable[[nn.Module], torch.Tensor]  # the model -> the loss of one step's batch


@dataclass
class Run:
    """One model to measure: its optimizer and its step's loss."""

    model: nn.Module
    optimizer: Any
    loss_of: StepLoss


def train_step(model: nn.Module, optimizer: Any, loss_of: StepLoss) -> float:
    """One step: forward, backward, optimizer step, gradients freed."""
    loss = loss_of(model)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def measured_runs(runs: list[Run], steps: int = 2) -> list[int]:
    """Each run's peak bytes above the start of its `steps` steps, one run after the other under one
    profiler (starting one costs seconds on a loaded machine)."""
    tracker = AllocationTracker()
    with tracker:
        # An allocation event before the first phase: the profiler's running total may carry bytes
        # that earlier profiled windows allocated and that were freed unprofiled, so a phase's
        # baseline must be read from this window's own events, not assumed 0.
        marker = torch.empty(1)
        for index, run in enumerate(runs):
            with tracker.phase(f"run{index}"):
                for _ in range(steps):
                    train_step(run.model, run.optimizer, run.loss_of)
    del marker
    return [tracker.peak(f"run{i}") - tracker.live_at(f"run{i}") for i in range(len(runs))]


def measured_step_bytes(model: nn.Module, optimizer: Any, loss_of: StepLoss, steps: int = 2) -> int:
    """One model's peak bytes above the start of its `steps` steps."""
    return measured_runs([Run(model, optimizer, loss_of)], steps)[0]


def adamw(model: nn.Module, lr: float) -> Any:
    """AdamW over the model's trainable parameters (weight decay 0, torch's default CPU path)."""
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
