"""What Hugging Face's tools inspect on a model, answered for a split model as for the HF class.

`transformers.Trainer` decides how to normalise the loss from the model it is given: whether its
forward accepts loss kwargs (`num_items_in_batch`), its `loss_type` (a causal LM's labels are
counted shifted), and which dataset columns its forward signature names. A split model answers
each from the Hugging Face class it wraps, so Trainer treats it exactly as the one-process
PeftModel. What plain Trainer cannot do across the split (step and clip the edge's trunk adapter)
it is refused here, at the first training forward, rather than train silently differently.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

import torch
from peft import PeftModel
from torch import nn
from torch.optim import Optimizer

from device_client.autograd import ForwardContext
from device_client.generation import split_generate
from device_client.optim import SplitOptimizer
from device_client.trunk import RemoteTrunk
from splitft.errors import FailedPrecondition
from splitft.model.families import Family

TRAINER_FRAMES = 12  # how far up the stack a Trainer's compute_loss can be from the forward


def accepts_loss_kwargs(root: nn.Module) -> bool:
    """Trainer's own test (`Trainer.__init__`, model introspection) applied to the HF class."""
    if hasattr(root, "accepts_loss_kwargs"):
        return bool(root.accepts_loss_kwargs)
    parameters = inspect.signature(root.forward).parameters.values()
    return any(p.kind == inspect.Parameter.VAR_KEYWORD for p in parameters)


def signed_forward(forward: Callable[..., Any], root: nn.Module) -> Callable[..., Any]:
    """`forward` (keyword arguments only) carrying the HF class's forward signature, so tools that
    read it (Trainer's unused-column removal) keep the columns the HF class takes."""

    def call(**inputs: Any) -> Any:
        return forward(**inputs)

    call.__signature__ = inspect.signature(root.forward)  # type: ignore[attr-defined]
    call.__doc__ = forward.__doc__
    return call


def unwrap_optimizer(optimizer: Any) -> Any:
    """The optimizer inside accelerate's `AcceleratedOptimizer` wrappers (themselves optimizers)."""
    while not isinstance(optimizer, SplitOptimizer) and isinstance(
        getattr(optimizer, "optimizer", None), Optimizer
    ):
        optimizer = optimizer.optimizer
    return optimizer


def calling_trainer() -> Any:
    """The `transformers.Trainer` whose step called this forward, if one did (None otherwise)."""
    module = sys.modules.get("transformers.trainer")  # never imported here: only if the caller did
    if module is None:
        return None
    frame: FrameType | None = sys._getframe(2)
    for _ in range(TRAINER_FRAMES):
        if frame is None:
            return None
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, module.Trainer):
            return candidate
        frame = frame.f_back
    return None


def refuse_plain_trainer(trunk_trainable: bool) -> None:
    """Refuse a training forward driven by a Trainer that would train the split model differently
    from the one-process model: its own torch optimizer never steps the trunk adapter, and its
    `max_grad_norm` clips the device's gradients only (it cannot see the edge's)."""
    if not trunk_trainable:
        return  # every trainable parameter is here: plain Trainer steps and clips all of them
    trainer = calling_trainer()
    if trainer is None or getattr(trainer, "clips_split_models", False):
        return
    if not isinstance(unwrap_optimizer(trainer.optimizer), SplitOptimizer):
        raise FailedPrecondition(
            "transformers.Trainer built a torch optimizer over the device's parameters only: the trunk "
            "adapter on the edge would never train. Use device_client.SplitTrainer (same arguments)"
        )
    if trainer.args.max_grad_norm and trainer.args.max_grad_norm > 0:
        raise FailedPrecondition(
            f"transformers.Trainer clips max_grad_norm={trainer.args.max_grad_norm} over the device's "
            "gradients only, not the global norm with the edge's trunk adapter. Use "
            "device_client.SplitTrainer (same arguments), or max_grad_norm=0"
        )


class HuggingFaceFacade:
    """Mixed into `SplitModel`: the attributes Trainer and peft read on a model, from the HF class."""

    peft_model: PeftModel | None
    root: nn.Module | None
    _trunk: RemoteTrunk
    _optimizer: SplitOptimizer | None
    _context: ForwardContext
    family: Family

    @property
    def hf_root(self) -> nn.Module:
        """The device's Hugging Face model (with peft's LoRA layers in it when LoRA)."""
        root = self.peft_model.get_base_model() if self.peft_model is not None else self.root
        assert root is not None  # one of the two always exists
        return root

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero both sides' gradients (Trainer zeroes through the model, not the optimizer)."""
        nn.Module.zero_grad(self, set_to_none)  # type: ignore[arg-type]
        self._trunk.mark_zero_grad()
        if self._optimizer is not None:
            self._optimizer.zero_grad(set_to_none)

    @property
    def hf_class(self) -> type[nn.Module]:
        """The Hugging Face class this model splits (e.g. LlamaForCausalLM)."""
        return type(self.hf_root)

    @property
    def accepts_loss_kwargs(self) -> bool:
        """Whether Trainer passes `num_items_in_batch` to forward: as for the HF class."""
        return accepts_loss_kwargs(self.hf_root)

    def generate(self, **kwargs: Any) -> torch.Tensor:
        """Hugging Face's `generate` (causal LMs): same arguments as PeftModel.generate (input_ids,
        attention_mask, max_new_tokens, do_sample, ...), key/value caches on the device and on the
        edge (`use_cache=False`: none). Returns the token ids (prompt included)."""
        return split_generate(self._generation_net(), self.hf_root, self.family.name, self._context, **kwargs)

    def _generation_net(self) -> nn.Module:
        return self.peft_model if self.peft_model is not None else self.hf_root

    @property
    def loss_type(self) -> str | None:
        """The HF class's loss type (Trainer counts a causal LM's labels shifted)."""
        return getattr(self.hf_root, "loss_type", None)
