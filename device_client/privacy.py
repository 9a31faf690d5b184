"""Where `PrivacyConfig` acts on the device: on h_k as it leaves for the edge, on the gradient returned
for the trunk output, as the NoPeek and CCA penalties on the device's blocks, and as the private
warm-up, whose forwards stop before h_k leaves, or with `warmup_task` go on through a public trunk
loaded on the device instead of the edge's (docs/privacy.md).

`PrivacyGuard` is owned by one split model. Its embeddings slot is thread-local, like the forward
context: micro-batches of one pipelined step run their forwards in threads of their own.
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from torch.utils.hooks import RemovableHandle
from transformers.modeling_outputs import ModelOutput

from splitft.errors import InvalidArgument
from splitft.model.loading import edge_view, load_span
from splitft.privacy.config import PrivacyConfig
from splitft.privacy.transforms import (
    canonical_leak,
    clip_and_noise,
    cls_and_mean,
    distance_correlation,
    sample_tokens,
)

CCA_TOKENS = 2048  # token vectors per batch for the CCA penalty (it needs more rows than dimensions)


class PrivateWarmupStep(Exception):  # noqa: N818 (control flow, not an error)
    """Raised where h_k would leave during the private warm-up; carries the penalty, the forward's loss."""

    def __init__(self, penalty: torch.Tensor) -> None:
        super().__init__("private warm-up: nothing is sent")
        self.penalty = penalty


@dataclass
class PrivateWarmupOutput(ModelOutput):
    """A private warm-up forward's output: the penalties as the loss; no logits (the trunk never ran)."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None


def forward_or_warmup(net: nn.Module, inputs: dict[str, Any], guard: PrivacyGuard | None = None) -> Any:
    """`net(**inputs)`, or the output of a private warm-up forward: the penalties alone as its loss, or
    with `warmup_task` the task's loss (through the public trunk on the device) weighted and added."""
    if guard is not None:
        guard.start_forward(net.training, has_labels=inputs.get("labels") is not None)
    try:
        out = net(**inputs)
    except PrivateWarmupStep as step:
        return PrivateWarmupOutput(loss=step.penalty)
    return out if guard is None else guard.finish_warmup(out)


def _public_copy(blocks: list[nn.Module]) -> list[nn.Module]:
    """Frozen copies of the device's first blocks with every adapter off: the public blocks."""
    copies = [copy.deepcopy(block) for block in blocks]
    for block in copies:
        for module in block.modules():
            if isinstance(module, BaseTunerLayer):
                module.enable_adapters(False)
        block.requires_grad_(False)
    return copies


def _public_trunk(model_dir: str, start: int, stop: int) -> list[nn.Module]:
    """The trunk's blocks with the public weights, loaded on the device (the warm-up's consistency)."""
    span = load_span(model_dir, lambda root, family: edge_view(root, family, start, stop), init_missing=False)
    blocks = list(span.family.blocks(span.root)[start:stop])
    for block in blocks:
        block.requires_grad_(False)  # public and frozen: only the device's own blocks train through it
    return blocks


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
        self.last_leak: float | None = None  # the last canonical leak computed (for logs and tests)
        self.warmed = 0  # private warm-up forwards taken (nothing sent)
        self._public: list[nn.Module] = []
        self._trunk: list[nn.Module] = []  # a public trunk, for the warm-up's consistency only
        self.last_consistency: float | None = None
        self.last_task: float | None = None  # the task's loss in the last warm-up forward (warmup_task)
        self.penalized = 0  # training forwards that carried the penalty (for the warm-up)
        self.last_weight = 0.0  # the penalty's weight in the last of them

    @classmethod
    def for_fields(cls, fields: dict[str, Any]) -> PrivacyGuard | None:
        """A guard for a `PrivacyConfig`'s fields; None when every defense is off."""
        config = PrivacyConfig.from_dict(fields)
        return cls(config) if config.active else None

    def watching(
        self, blocks: list[nn.Module], model_dir: str | None = None, trunk: tuple[int, int] | None = None
    ) -> PrivacyConfig:
        """NoPeek and CCA: remember the input of the first device block (the embeddings) of every
        forward, and the arguments it was called with (CCA runs a public copy of `blocks`, the device's
        blocks before the trunk, on them; the warm-up's consistency runs the trunk's blocks, `trunk` =
        (start, stop) of `model_dir`, after them). Returns the config, for the model to show."""
        config = self.config
        wants_trunk = config.warmup_consistency > 0 or config.warmup_task > 0
        if wants_trunk and model_dir is not None and trunk is not None:
            self._trunk = _public_trunk(model_dir, *trunk)
        if (
            config.cca_weight > 0 or self._trunk
        ) and not self._public:  # copied before the hook, which it must not carry
            self._public = _public_copy(blocks)
        if (config.nopeek_weight > 0 or config.cca_weight > 0 or self._trunk) and self._hook is None:
            self._hook = blocks[0].register_forward_pre_hook(self._remember, with_kwargs=True)
        return config

    def _remember(self, _module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        hidden = args[0] if args else kwargs.get("hidden_states")
        self._local.embeddings = hidden if isinstance(hidden, torch.Tensor) else None
        self._local.call = (args[1:], {k: v for k, v in kwargs.items() if k != "hidden_states"})

    @torch.no_grad()
    def _public_hidden(self, embeddings: torch.Tensor) -> torch.Tensor:
        """h_k of this forward's embeddings through the public blocks, called as the device's were."""
        return self._through(self._public, embeddings)

    def _through(self, blocks: list[nn.Module], hidden: torch.Tensor) -> torch.Tensor:
        args, kwargs = self._local.call
        for block in blocks:
            out = block(hidden, *args, **kwargs)
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden

    def _consistency(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """How far the public trunk's pooled output on `hidden` is from its output on the public h_k:
        the squared distance over the batch, relative to the spread of the latter."""
        with torch.no_grad():
            target = cls_and_mean(
                self._through(self._trunk, self._public_hidden(self._local.embeddings)), attention_mask
            )
        ours = cls_and_mean(self._through(self._trunk, hidden), attention_mask)
        spread = ((target - target.mean(0)) ** 2).sum().clamp(min=1e-12)
        consistency = ((ours - target) ** 2).sum() / spread
        self.last_consistency = float(consistency.detach())
        return consistency

    def warming_up(self, training: bool) -> bool:
        """Whether this forward is one of the private warm-up's (then nothing may be sent)."""
        return training and torch.is_grad_enabled() and self.warmed < self.config.private_warmup

    def start_forward(self, training: bool, *, has_labels: bool) -> None:
        """Before a forward of the model: refuses a `warmup_task` warm-up forward without labels (its
        loss is the task's, computed here), and drops what an interrupted forward left behind."""
        self._local.warmup_loss = None
        if self.config.warmup_task > 0 and self.warming_up(training) and not has_labels:
            raise InvalidArgument(
                "privacy.warmup_task: a private warm-up forward computes the task's loss on the device "
                "and needs labels: pass labels= (or set privacy.warmup_task to 0)"
            )

    def warmup_step(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """A private warm-up forward where h_k would leave: nothing is sent. Without `warmup_task`, raises
        its stop (the penalties at full weight as its loss); with it, keeps that loss for
        `finish_warmup` and returns the public trunk's output on `hidden`, computed here, for the
        device's blocks after the trunk and its head."""
        loss = self._warmup_penalties(hidden, attention_mask)
        if self.config.warmup_task == 0:
            raise PrivateWarmupStep(loss)
        if not self._trunk:
            raise RuntimeError("privacy.warmup_task: the public trunk was not loaded on the device")
        self._local.warmup_loss = loss
        return self._through(self._trunk, hidden)

    def finish_warmup(self, out: Any) -> Any:
        """`out` unchanged, or for a `warmup_task` warm-up forward its output with the loss
        warmup_task * (task's loss) + the warm-up's penalties."""
        penalties = getattr(self._local, "warmup_loss", None)
        if penalties is None:
            return out
        self._local.warmup_loss = None
        self.last_task = float(out.loss.detach())
        loss = self.config.warmup_task * out.loss + penalties
        return PrivateWarmupOutput(loss=loss, logits=getattr(out, "logits", None))

    def _warmup_penalties(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """The private warm-up's penalties for this forward (and the trunk's consistency), at full weight."""
        self.warmed += 1
        loss = hidden.sum() * 0.0  # a forward the penalties cannot use (one token): no gradient
        consistency = self.config.warmup_consistency
        if consistency > 0 and self._trunk and getattr(self._local, "embeddings", None) is not None:
            loss = loss + consistency * self._consistency(hidden, attention_mask)
        penalty = self._penalty(hidden, attention_mask, ramp=False)
        return loss if penalty is None else loss + penalty

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
        """`out` carrying the NoPeek and CCA penalties on `hidden` (h_k before clip and noise), when
        a penalty is on and a backward will run."""
        penalty = self._penalty(hidden, attention_mask, ramp=True)
        return out if penalty is None else _AddPenalty.apply(out, penalty)

    def _penalty(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor | None, *, ramp: bool
    ) -> torch.Tensor | None:
        """The weighted sum of the penalties that are on for this forward; None when none applies."""
        embeddings = getattr(self._local, "embeddings", None)
        self._local.embeddings = None
        config = self.config
        if embeddings is None or not torch.is_grad_enabled() or not hidden.requires_grad:
            return None
        terms = []
        if config.nopeek_weight > 0:
            a, b = sample_tokens(embeddings, hidden, attention_mask, config.nopeek_tokens)
            if a.shape[0] >= 2:
                dcor = distance_correlation(a, b)
                self.last_penalty = float(dcor.detach())
                self.penalized += 1
                weight = config.nopeek_weight
                if ramp and config.nopeek_warmup > 0:  # the task trains first; the weight ramps up
                    weight *= min(1.0, self.penalized / config.nopeek_warmup)
                self.last_weight = weight
                terms.append(weight * dcor)
        if config.cca_weight > 0:
            a, b = sample_tokens(self._public_hidden(embeddings), hidden, attention_mask, CCA_TOKENS)
            if a.shape[0] >= 2:
                leak = canonical_leak(a, b)
                self.last_leak = float(leak.detach())
                terms.append(config.cca_weight * torch.clamp(leak - config.cca_target, min=0.0))
        return sum(terms[1:], terms[0]) if terms else None

    def close(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
