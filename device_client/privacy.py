"""Where `PrivacyConfig` acts on the device: on h_k as it leaves for the edge, on the gradient returned
for the trunk output, and as the NoPeek penalty on the device's blocks (docs/privacy.md).

`PrivacyGuard` is owned by one split model. Its embeddings slot is thread-local, like the forward
context: micro-batches of one pipelined step run their forwards in threads of their own.
"""

from __future__ import annotations

import threading
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from splitft.privacy.config import PrivacyConfig
from splitft.privacy.transforms import clip_and_noise, distance_correlation, sample_tokens


class _AddPenalty(torch.autograd.Function):
    """Identity on `out` in forward; in backward also differentiates `penalty` (with gradient 1), so
    the penalty joins whatever loss the caller backpropagates through the trunk's output, without
    changing the loss the model reports."""

    @staticmethod
    def forward(ctx: Any, out: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
        ctx.penalty_shape = penalty.shape
        return out.view_as(out)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return grad, torch.ones(ctx.penalty_shape, dtype=grad.dtype, device=grad.device)


class PrivacyGuard:
    """Applies one model's `PrivacyConfig`; every method is a no-op for the options that are off."""

    def __init__(self, config: PrivacyConfig) -> None:
        self.config = config
        self._local = threading.local()
        self._hook: RemovableHandle | None = None
        self.last_penalty: float | None = None  # the last dCor computed (for logs and tests)
        self.penalized = 0  # training forwards that carried the penalty (for the warm-up)
        self.last_weight = 0.0  # the penalty's weight in the last of them

    @classmethod
    def for_fields(cls, fields: dict[str, Any]) -> PrivacyGuard | None:
        """A guard for a `PrivacyConfig`'s fields; None when every defense is off."""
        config = PrivacyConfig.from_dict(fields)
        return cls(config) if config.active else None

    def watching(self, first_block: nn.Module) -> PrivacyConfig:
        """NoPeek: remember the input of the first device block (the embeddings) of every forward.
        Returns the config, for the model to show."""
        if self.config.nopeek_weight > 0 and self._hook is None:
            self._hook = first_block.register_forward_pre_hook(self._remember, with_kwargs=True)
        return self.config

    def _remember(self, _module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        hidden = args[0] if args else kwargs.get("hidden_states")
        self._local.embeddings = hidden if isinstance(hidden, torch.Tensor) else None

    def outgoing_activations(self, hidden: torch.Tensor) -> torch.Tensor:
        """h_k as it will cross the wire: clipped and noised when the config says so."""
        clip = self.config.activation_clip
        if clip is None:
            return hidden
        return clip_and_noise(hidden, clip, self.config.activation_noise, self.config.clip_scope)

    def outgoing_gradient(self, grad: torch.Tensor) -> torch.Tensor:
        """dL/d(trunk output) as it will cross the wire: clipped per example and noised."""
        clip = self.config.gradient_clip
        if clip is None:
            return grad
        return clip_and_noise(grad, clip, self.config.gradient_noise, "example")

    def with_penalty(
        self, out: torch.Tensor, hidden: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """`out` carrying the NoPeek penalty between this forward's embeddings and `hidden` (h_k
        before clip and noise), when the penalty is on and a backward will run."""
        embeddings = getattr(self._local, "embeddings", None)
        self._local.embeddings = None
        weight = self.config.nopeek_weight
        if weight <= 0 or embeddings is None or not torch.is_grad_enabled() or not hidden.requires_grad:
            return out
        a, b = sample_tokens(embeddings, hidden, attention_mask, self.config.nopeek_tokens)
        if a.shape[0] < 2:
            return out
        dcor = distance_correlation(a, b)
        self.last_penalty = float(dcor.detach())
        self.penalized += 1
        warmup = self.config.nopeek_warmup
        if warmup > 0:  # the task trains first; the penalty ramps up linearly
            weight *= min(1.0, self.penalized / warmup)
        self.last_weight = weight
        return _AddPenalty.apply(out, weight * dcor)

    def close(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
