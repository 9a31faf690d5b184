"""The trunk adapter's optimizer on the edge: the other half of `device_client.optim`.

The device's `SplitOptimizer` drives this one: it names the torch optimizer class once
(ConfigureOptimizer), then at every step sends the current hyper-parameters (so LR schedules reach
the trunk), the gradient scale from clipping, and whether to zero the gradients first (zeroing is
lazy on the device). Plain compute, no gRPC and no JSON: the transport parses `hparams_json` with
`splitft.wire.serde.hparams_from_json`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from splitft.errors import FailedPrecondition, InvalidArgument
from splitft.wire.serde import EDGE_OPTIMIZERS

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    name: getattr(torch.optim, name) for name in EDGE_OPTIMIZERS
}


class TrunkOptimizer:
    """One session's trunk optimizer over `params` (the trainable trunk parameters, which a
    selection method narrows before the optimizer is configured)."""

    def __init__(self, params: list[nn.Parameter]) -> None:
        self.params = params
        self.optimizer: torch.optim.Optimizer | None = None
        self.steps = 0

    def check_name(self, name: str) -> None:
        """InvalidArgument unless `name` is one of `EDGE_OPTIMIZERS`."""
        if name not in OPTIMIZERS:
            raise InvalidArgument(
                f"optimizer {name!r} is not supported on the edge; supported: {list(OPTIMIZERS)}"
            )

    def configure(self, name: str, hparams: dict[str, Any]) -> None:
        """Build the `name` optimizer (one of `EDGE_OPTIMIZERS`) over the trainable parameters."""
        self.check_name(name)
        if not self.params:
            return
        if not {"foreach", "fused"} & set(hparams):
            # torch steps CPU tensors one by one by default: a dozen small ops per adapter tensor,
            # 3.8 ms per step for a 48-tensor rank-4 LoRA where the foreach kernels take 1.5 ms,
            # with bit-identical results (measured; docs/benchmarks.md, `bench edge`).
            hparams = {**hparams, "foreach": True}
        try:
            self.optimizer = OPTIMIZERS[name](self.params, **hparams)
        except (TypeError, ValueError, IndexError) as exc:
            raise InvalidArgument(f"invalid {name} hyper-parameters {hparams}: {exc}") from exc

    def accumulate(self, params: list[nn.Parameter], grads: list[torch.Tensor | None]) -> None:
        """Add gradients computed elsewhere (a shared pass's backward) to `params`' `.grad`, as
        `Tensor.backward` would."""
        for param, grad in zip(params, grads, strict=True):
            if grad is None:
                continue
            if param.grad is None:
                param.grad = grad
            else:
                param.grad += grad

    def zero_grad(self) -> None:
        """Drop every trainable parameter's gradient."""
        for p in self.params:
            p.grad = None

    def grad_norm_sq(self, *, zero_grad_first: bool) -> float:
        """The squared 2-norm of the trainable parameters' gradients (for clipping across the split)."""
        if zero_grad_first:
            self.zero_grad()
        total = 0.0
        for p in self.params:
            if p.grad is not None:
                total += float(torch.linalg.vector_norm(p.grad, 2.0).item()) ** 2
        return total

    def step(self, hparams: dict[str, Any], grad_scale: float, *, zero_grad_first: bool) -> int:
        """One optimizer step with the device's current `hparams`, gradients scaled by `grad_scale`
        (0 or 1: unscaled); returns the steps taken so far. A session that trains nothing counts."""
        if zero_grad_first:
            self.zero_grad()
        if self.params:
            if self.optimizer is None:
                raise FailedPrecondition("step before ConfigureOptimizer")
            self._update_hparams(hparams)
            if grad_scale and grad_scale != 1.0:
                if not math.isfinite(grad_scale) or grad_scale < 0:
                    raise InvalidArgument(
                        f"grad_scale must be a finite non-negative number, got {grad_scale}"
                    )
                torch._foreach_mul_([p.grad for p in self.params if p.grad is not None], grad_scale)
            self.optimizer.step()
        self.steps += 1
        return self.steps

    def release(self) -> None:
        """Drop the optimizer state and the parameter list so their memory can be freed."""
        self.optimizer = None
        self.params = []

    def _update_hparams(self, hparams: dict[str, Any]) -> None:
        assert self.optimizer is not None
        # Check every value against the kind it replaces before touching any group: a wrongly
        # shaped value (betas of length 1, a bool for lr) would otherwise break every later step.
        for group in self.optimizer.param_groups:
            for key, value in hparams.items():
                if key not in group or key == "params":
                    raise InvalidArgument(f"unknown optimizer hyper-parameter {key!r}")
                if not _same_kind(group[key], value):
                    raise InvalidArgument(
                        f"optimizer hyper-parameter {key!r} = {value!r} does not fit its "
                        f"current value {group[key]!r}"
                    )
        for group in self.optimizer.param_groups:
            for key, value in hparams.items():
                group[key] = tuple(value) if isinstance(value, list) else value


def _same_kind(current: object, value: object) -> bool:
    """Whether `value` (parsed JSON) may replace the optimizer hyper-parameter `current`."""
    if isinstance(current, bool) or isinstance(value, bool):
        return isinstance(current, bool) and isinstance(value, bool)
    if isinstance(current, (tuple, list)):
        return isinstance(value, list) and len(value) == len(current)
    if isinstance(current, (int, float, torch.Tensor)):
        return isinstance(value, (int, float))
    return False
