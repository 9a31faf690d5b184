"""Shared by the selection methods: which modules they touch, weights in one orientation, batches.

Every method here scores and masks weights in the `nn.Linear` orientation `[out, in]`. GPT-2's
`Conv1D` stores its weight transposed (`[in, out]`, `y = x @ W + b`), so all weight access goes
through `linear_weight`, and masks never need to know which of the two a module is.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast

import torch
from torch import nn
from transformers import PretrainedConfig
from transformers.pytorch_utils import Conv1D

from splitft.errors import InvalidArgument
from splitft.methods.checks import checked_filters
from splitft.model.families import family_for

logger = logging.getLogger(__name__)

__all__ = [
    "LINEAR_TYPES",
    "call_model",
    "checked_filters",
    "count_parameters",
    "eval_mode",
    "find_target_modules",
    "is_linear_like",
    "linear_shape",
    "linear_weight",
    "token_mask_of",
]

LINEAR_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, Conv1D)


def is_linear_like(module: nn.Module) -> bool:
    """True for the module types whose weights the methods can select from."""
    return isinstance(module, LINEAR_TYPES)


def linear_shape(module: nn.Module) -> tuple[int, int]:
    """`(out_features, in_features)` of an `nn.Linear` or `Conv1D`."""
    if isinstance(module, nn.Linear):
        return module.out_features, module.in_features
    if isinstance(module, Conv1D):
        return int(module.nf), int(module.nx)
    raise InvalidArgument(f"expected nn.Linear or Conv1D, got {type(module).__name__}")


def linear_weight(module: nn.Module) -> torch.Tensor:
    """The weight as `[out, in]`; a transposed view (no copy) for `Conv1D`."""
    linear_shape(module)  # raises for any other module type
    weight = cast(torch.Tensor, module.weight)
    return weight.t() if isinstance(module, Conv1D) else weight


def _block_prefix(model: nn.Module) -> str | None:
    """Dotted path of the transformer block list, or None for a model of no known family."""
    config = getattr(model, "config", None)
    if not isinstance(config, PretrainedConfig):
        return None
    try:
        return family_for(config).blocks_path
    except InvalidArgument:
        return None


def _matches(name: str, filters: Sequence[str]) -> bool:
    # peft's rule: a filter names a module exactly or as the last dotted components of its name.
    return any(name == f or name.endswith("." + f) for f in filters)


def find_target_modules(model: nn.Module, target_modules: Sequence[str] | None = None) -> list[str]:
    """Names of the Linear/Conv1D modules a method selects from, in registration order.

    With `target_modules`, every Linear/Conv1D whose name matches a filter (exactly or as a
    dotted suffix, as in peft). Without, every Linear/Conv1D inside the transformer blocks of a
    known family, so embeddings and task heads stay out of the budget; a model of no known family
    (a toy module) falls back to every Linear/Conv1D it holds.
    """
    linear = [name for name, module in model.named_modules() if is_linear_like(module)]
    if target_modules is not None:
        names = [name for name in linear if _matches(name, target_modules)]
    else:
        prefix = _block_prefix(model)
        names = linear if prefix is None else [n for n in linear if n.startswith(prefix + ".")]
    if not names:
        raise InvalidArgument(f"no nn.Linear or Conv1D module matches target_modules={target_modules!r}")
    logger.debug("selected %d target modules", len(names))
    return names


def count_parameters(model: nn.Module) -> int:
    """All parameters of the model (tied weights once), trainable or not: the budget's base."""
    return sum(p.numel() for p in model.parameters())


def call_model(model: nn.Module, batch: Any) -> Any:
    """Run one batch: a dict as keyword arguments (HF style), a tuple/list as positional, else one input."""
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def token_mask_of(batch: Any) -> torch.Tensor | None:
    """The batch's attention mask ([batch, tokens]), used to leave padding out of statistics."""
    mask = batch.get("attention_mask") if isinstance(batch, dict) else None
    return mask if isinstance(mask, torch.Tensor) else None


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode (no dropout) for a statistics pass, then every submodule's own mode back."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training
