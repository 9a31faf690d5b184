"""`SplitTrainer`: `transformers.Trainer` for a split model, with the same arguments.

Plain Trainer builds a torch optimizer over the parameters it can see and clips their gradients;
the trunk adapter's live on the edge. SplitTrainer builds the same optimizer (Trainer's class,
hyper-parameters and weight-decay groups) as the split optimizer, which also steps the trunk
adapter, clips `max_grad_norm` over the global norm of both sides, logs that norm, and saves the
whole model's adapter as one standard peft adapter. Everything else is Trainer's own: gradient
accumulation, LR schedulers, the loss normalisation (`num_items_in_batch`), logging, callbacks.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from transformers import Trainer
from transformers.trainer import TRAINING_ARGS_NAME
from transformers.utils import can_return_loss, find_labels

from device_client.hf_compat import unwrap_optimizer
from device_client.model import SplitModel
from device_client.optim import SplitOptimizer
from splitft.errors import InvalidArgument


class SplitTrainer(Trainer):
    """`transformers.Trainer(model=split_model, args=TrainingArguments(...), train_dataset=...)`
    that trains both sides of the split exactly as Trainer trains the one-process PeftModel."""

    clips_split_models = True  # device_client.hf_compat lets this Trainer drive a split model

    def __init__(self, model: SplitModel | None = None, *args: Any, **kwargs: Any) -> None:
        if not isinstance(model, SplitModel):
            raise InvalidArgument(
                f"SplitTrainer trains a device_client.SplitModel, got {type(model).__name__}"
            )
        super().__init__(model, *args, **kwargs)
        # Trainer reads these from the model's class; a split model's class is not the HF class.
        if self.args.label_names is None:
            self.label_names = find_labels(model.hf_class)
        self.can_return_loss = can_return_loss(model.hf_class)

    @property
    def split_model(self) -> SplitModel:
        model = self.accelerator.unwrap_model(self.model)
        assert isinstance(model, SplitModel)
        return model

    def split_optimizer(self) -> SplitOptimizer:
        optimizer = unwrap_optimizer(self.optimizer)
        if not isinstance(optimizer, SplitOptimizer):
            raise InvalidArgument(
                "SplitTrainer's optimizer must be the split model's (model.configure_optimizer(...)), "
                f"not {type(optimizer).__name__}"
            )
        return optimizer

    def create_optimizer(self, model: torch.nn.Module | None = None) -> torch.optim.Optimizer:
        """Trainer's optimizer (class, hyper-parameters, weight-decay groups) as the split optimizer."""
        if self.optimizer is not None:
            self.split_optimizer()  # one passed in `optimizers=` must step the trunk too
            return self.optimizer
        split = self.split_model
        decay = set(self.get_decay_parameter_names(split))
        named = [(n, p) for n, p in split.named_parameters() if p.requires_grad]
        groups = [
            {"params": [p for n, p in named if n in decay], "weight_decay": self.args.weight_decay},
            {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0},
        ]
        if self.optimizer_cls_and_kwargs is not None:
            optimizer_cls, kwargs = self.optimizer_cls_and_kwargs
        else:
            optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, split)  # type: ignore[arg-type]
        # The edge's trunk optimizer takes the first group's values: the trunk's LoRA weights are
        # all "decay" parameters, as they are in the one-process model's first group.
        kwargs = {"weight_decay": self.args.weight_decay, **kwargs}
        self.optimizer = split.configure_optimizer(optimizer_cls, param_groups=groups, **kwargs)
        return self.optimizer

    def _clip_grad_norm(self, model: torch.nn.Module) -> torch.Tensor:
        """Clip over the global norm of the device's and the trunk adapter's gradients."""
        return self.split_optimizer().clip_grad_norm_(self.args.max_grad_norm)

    def _get_grad_norm(self, model: torch.nn.Module, grad_norm: Any = None) -> Any:
        """The logged norm is both sides' too (max_grad_norm=0: measured, nothing clipped)."""
        if grad_norm is None:
            grad_norm = self.split_optimizer().clip_grad_norm_(float("inf"))
        return super()._get_grad_norm(model, grad_norm=grad_norm)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """`save_model()` and checkpoints: the whole model's adapter, one standard peft adapter."""
        output_dir = str(output_dir if output_dir is not None else self.args.output_dir)
        if not self.args.should_save:
            return
        self.split_model.save_adapter(output_dir)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))
