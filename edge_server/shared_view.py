"""A session's view of its job's shared trunk adapter: its own module tree over the adapter's
parameters, its own gradients, and one step of the shared optimizer per `Step` it sends.

The adapter itself (its parameters, optimizer, lock and lifetime) is `edge_server.shared_adapters`.
A `SharedAdapterView` is the session's `TrunkOptimizer`: the session code calls it as it calls its
own optimizer, and only two things differ. Gradients go to buffers of this session (`backward`,
`accumulate`), never to the parameters' `.grad`, which every session of the adapter shares; and a
step installs this session's gradients into `.grad`, steps the shared optimizer and clears them,
all under the adapter's lock, so steps of several sessions run one after the other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from edge_server.batched_trunk import share_modules
from edge_server.trunk_optim import TrunkOptimizer
from splitft.errors import FailedPrecondition
from splitft.model.routing import route_randomness

if TYPE_CHECKING:
    from edge_server.shared_adapters import SharedTrunkAdapter


class SnapshotLinear(nn.Linear):
    """A LoRA factor in a session's view of a shared adapter: the adapter's very parameters,
    computed with copies of them. Another session may step the adapter (in place) between this
    session's forward and its backward; autograd must keep the values this forward used, as the
    batched trunk's `_frozen_linear` does (the copies still pass gradients to the parameters)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`F.linear` on clones of the weight and bias."""
        bias = None if self.bias is None else self.bias.clone()
        return F.linear(x, self.weight.clone(), bias)


def snapshot_tree(root: nn.Module) -> nn.Module:
    """A copy of `root`'s module tree over the same parameters, whose LoRA factors are
    `SnapshotLinear`s (its own modules: train/eval mode and dropout are this session's)."""
    view = share_modules(root)
    for module in view.modules():
        for name in ("lora_A", "lora_B"):
            factors = getattr(module, name, None)
            if not isinstance(factors, nn.ModuleDict):
                continue
            for factor in factors.values():
                if type(factor) is nn.Linear:
                    # The same state, a forward that copies first: a class swap keeps the module's
                    # parameters (the adapter's) and every attribute peft reads.
                    factor.__class__ = SnapshotLinear
    route_randomness(view)  # this session's dropout draws come from its own streams
    return view


class SharedAdapterView(TrunkOptimizer):
    """One session's part in a shared trunk adapter: its gradients, its step count, its optimizer calls."""

    def __init__(self, adapter: SharedTrunkAdapter, leave: Callable[[], None]) -> None:
        super().__init__(list(adapter.params))
        self.adapter = adapter
        self._leave: Callable[[], None] | None = leave
        self._grads: dict[int, torch.Tensor] = {}  # id(parameter) -> this session's gradient
        self.configured = False

    def session_root(self) -> nn.Module:
        """This session's module tree over the shared adapter."""
        return snapshot_tree(self.adapter.root)

    def check_name(self, name: str) -> None:
        """As for an own optimizer, and the name of the optimizer the adapter already runs, if any."""
        super().check_name(name)
        self.adapter.check_optimizer(name)

    def configure(self, name: str, hparams: dict[str, Any]) -> None:
        """The first session configures the adapter's optimizer; the others must name the same."""
        self.adapter.configure(name, hparams)
        self.configured = True

    def accumulate(self, params: list[nn.Parameter], grads: list[torch.Tensor | None]) -> None:
        """Add gradients (of a shared pass, or this session's own backward) to this session's buffers."""
        for param, grad in zip(params, grads, strict=True):
            if grad is None:
                continue
            mine = self._grads.get(id(param))
            self._grads[id(param)] = grad if mine is None else mine + grad

    def backward(self, output: torch.Tensor, inputs: torch.Tensor, grad: torch.Tensor) -> torch.Tensor | None:
        """Back-propagate `grad` from `output` into this session's gradients; returns the gradient of
        `inputs` when it asked for one (the graph is freed, as `Tensor.backward` frees it)."""
        wanted = [*self.params, inputs] if inputs.requires_grad else list(self.params)
        grads = torch.autograd.grad(output, wanted, grad, allow_unused=True)
        self.accumulate(self.params, list(grads[: len(self.params)]))
        return grads[-1] if inputs.requires_grad else None

    def zero_grad(self) -> None:
        """Drop this session's gradients (the other sessions' stay)."""
        self._grads = {}

    def grad_norm_sq(self, *, zero_grad_first: bool) -> float:
        """The squared 2-norm of this session's gradients."""
        if zero_grad_first:
            self.zero_grad()
        total = 0.0
        for param in self.params:  # in parameter order, as the own-adapter optimizer sums
            grad = self._grads.get(id(param))
            if grad is not None:
                total += float(torch.linalg.vector_norm(grad, 2.0).item()) ** 2
        return total

    def step(self, hparams: dict[str, Any], grad_scale: float, *, zero_grad_first: bool) -> int:
        """One step of the shared optimizer with this session's gradients; returns this session's steps."""
        if zero_grad_first:
            self.zero_grad()
        if self.params:
            if not self.configured:
                raise FailedPrecondition("step before ConfigureOptimizer")
            self.adapter.step([self._grads.get(id(p)) for p in self.params], hparams, grad_scale)
        self.steps += 1
        return self.steps

    def export(self) -> tuple[dict[str, torch.Tensor], int]:
        """The shared adapter's tensors and every session's steps, read together."""
        return self.adapter.export()

    def load(self, state: dict[str, torch.Tensor], *, session_started: bool) -> int:
        """Start the shared adapter from `state` (see `SharedTrunkAdapter.load`)."""
        if session_started:
            raise FailedPrecondition("a trunk adapter is loaded before the session's first forward and step")
        return self.adapter.load(state)

    def release(self) -> None:
        """The session is gone: drop its gradients and leave the adapter (once)."""
        super().release()
        self._grads = {}
        leave, self._leave = self._leave, None
        if leave is not None:
            leave()
