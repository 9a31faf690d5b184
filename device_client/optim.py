"""One optimizer for both sides of the split.

`make_split_optimizer` returns an instance of a subclass of the requested torch optimizer: it is a
real `torch.optim.Optimizer` over the device's trainable parameters (so LR schedulers work), and
its `step`, `zero_grad` and `clip_grad_norm_` also drive the trunk adapter's optimizer on the edge
with the same hyper-parameters and the current learning rate. `make_scheduler` gives it the LR
schedules jobs name (constant, linear, cosine, each after a linear warmup).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from device_client.trunk import RemoteTrunk
from splitft.errors import InvalidArgument
from splitft.wire.serde import EDGE_OPTIMIZERS

_SCALARS = (int, float, bool)


def group_hparams(group: dict[str, Any]) -> dict[str, Any]:
    """The JSON-safe hyper-parameters of a param group (lr, betas, eps, weight_decay, ...)."""
    out: dict[str, Any] = {}
    for key, value in group.items():
        if key == "params" or value is None:
            continue
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, _SCALARS) or (
            isinstance(value, (tuple, list)) and all(isinstance(v, _SCALARS) for v in value)
        ):
            out[key] = list(value) if isinstance(value, tuple) else value
    return out


def make_split_optimizer(
    cls: type[torch.optim.Optimizer],
    params: Iterable[torch.nn.Parameter] | Iterable[dict[str, Any]],
    trunk: RemoteTrunk | None,
    **hparams: Any,
) -> SplitOptimizer:
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise InvalidArgument(f"configure_optimizer needs a torch.optim.Optimizer class, got {cls!r}")
    if trunk is not None and trunk.trainable and cls.__name__ not in EDGE_OPTIMIZERS:
        raise InvalidArgument(f"the edge can run {EDGE_OPTIMIZERS} for the trunk adapter, not {cls.__name__}")
    split_cls = type(f"Split{cls.__name__}", (SplitOptimizer, cls), {})
    optimizer = split_cls(list(params), **hparams)
    optimizer._trunk = trunk
    optimizer._grad_scale = 1.0
    optimizer.steps_taken = 0  # both sides stepped; a checkpoint's step and data cursor
    # The edge gets the constructor's arguments, then at every step the current values of those
    # (and lr), so LR schedulers and manual param_group edits reach the trunk's optimizer too.
    optimizer._synced = sorted({"lr", *hparams})
    if trunk is not None and trunk.trainable:
        trunk.configure_optimizer(cls.__name__, optimizer._current_hparams())
    return optimizer


class SplitOptimizer(torch.optim.Optimizer):
    """Mixed in before a torch optimizer class (e.g. AdamW): steps the device and the trunk together."""

    _trunk: RemoteTrunk | None
    _grad_scale: float
    steps_taken: int
    _synced: list[str]
    param_groups: list[dict[str, Any]]

    def _current_hparams(self) -> dict[str, Any]:
        current = group_hparams(self.param_groups[0])
        return {key: current[key] for key in self._synced if key in current}

    def step(self, closure: Any = None) -> Any:
        if closure is not None:
            raise InvalidArgument("closures are not supported by the split optimizer")
        loss = super().step()
        if self._trunk is not None:
            self._trunk.step(self._current_hparams(), self._grad_scale)
        self._grad_scale = 1.0
        self.steps_taken += 1
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none)
        if self._trunk is not None:
            self._trunk.mark_zero_grad()
        self._grad_scale = 1.0

    @torch.no_grad()
    def clip_grad_norm_(self, max_norm: float, norm_type: float = 2.0) -> torch.Tensor:
        """Clip the global gradient norm over device and trunk adapters together, as torch would."""
        if norm_type != 2.0:
            raise InvalidArgument("only the 2-norm can be combined across the split")
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        # In float32 as torch.nn.utils.clip_grad_norm_ computes it (the norm of the per-tensor
        # norms, the coefficient clamped to 1), so the clipped gradients round as the one-process
        # model's do; the trunk's norm joins as one more per-tensor norm.
        norms = [torch.linalg.vector_norm(g, 2.0).float().cpu() for g in grads]
        if self._trunk is not None and self._trunk.trainable:
            trunk_sq = self._trunk.grad_norm_sq() * self._grad_scale**2
            norms.append(torch.tensor(math.sqrt(trunk_sq), dtype=torch.float32))
        if not norms:
            return torch.tensor(0.0)
        total = torch.linalg.vector_norm(torch.stack(norms), 2.0)
        coef = torch.clamp(float(max_norm) / (total + 1e-6), max=1.0)
        if float(coef) < 1.0:
            for g in grads:
                g.mul_(coef.to(g.device))
            self._grad_scale *= float(coef)
        return total


def lr_factor(schedule: str, step: int, warmup: int, total: int) -> float:
    """The LR multiplier before optimizer step `step` (0-based), as transformers' schedules define it."""
    if step < warmup:
        return step / max(1, warmup)
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    if schedule == "cosine":
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))
    raise InvalidArgument(f"unknown LR schedule {schedule!r} (constant, linear or cosine)")


def make_scheduler(
    optimizer: torch.optim.Optimizer, schedule: str, warmup: int, total: int, start: int = 0
) -> torch.optim.lr_scheduler.LambdaLR:
    """`schedule` over `total` optimizer steps after `warmup` steps of linear warmup; `start`: this
    optimizer's first step is the schedule's step `start` (a federated round in a job-long schedule)."""
    lr_factor(schedule, total, 0, total)  # refuse an unknown name now, not at the first step
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(schedule, start + step, warmup, total)
    )
