"""TaskEdge (Hu et al., arXiv 2504.03718): train < 0.1% of the weights, chosen per task.

Importance of weight entry (i, j) of a Linear is the Wanda score `|W_ij| * ||X_j||_2`, where
`||X_j||_2` is the norm of input feature j over every calibration token: a large weight on an
input that the task actually excites matters; one on a silent input does not. The budget is
spread evenly over the model: every output neuron of every target layer keeps the same number k
of entries, so no layer is starved and none hoards the budget.

Rounding: `k = max(1, floor(budget / total_rows))`, capped per layer at its `in_features`. The
selection therefore never exceeds the budget, except when the budget is smaller than the number
of output rows: then every row still gets one entry (a warning is logged).

N:M (e.g. 2:4, the pattern NVIDIA sparse tensor cores accelerate) is a constraint on that same
budgeted selection: every row still keeps k entries, and at most N of them fall in any group of M
consecutive input columns. The greedy choice (take a row's entries by decreasing score, skipping
one whose group already holds N) equals the top k among the entries that rank in the top N of
their own group, which is how it is computed. A row holds at most `N * in / M` such entries, so k
is capped there (a warning says so when it bites). Until 2026-11 `n_m` ignored the budget and kept
N of every M in every row (half of every target weight at 2:4); that selection is the budget
`N / M` with this constraint, so it needs no mode of its own. Ties break toward the lower column
index (stable sort), so the same data always gives the same mask.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from splitft.errors import InvalidArgument
from splitft.methods.common import (
    call_model,
    count_parameters,
    eval_mode,
    find_target_modules,
    linear_weight,
    token_mask_of,
)
from splitft.methods.taskedge.config import TaskEdgeConfig, checked_n_m

logger = logging.getLogger(__name__)


def square_sums(x: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor:
    """Per input feature, the sum of squares over all tokens; padding tokens count zero."""
    x = x.detach().to(torch.float64)
    if token_mask is not None and tuple(x.shape[:-1]) == tuple(token_mask.shape):
        x = x * token_mask.to(x.device, x.dtype).unsqueeze(-1)
    return x.pow(2).reshape(-1, x.shape[-1]).sum(dim=0)


def collect_input_norms(
    model: nn.Module, batches: Iterable[Any], module_names: list[str]
) -> dict[str, torch.Tensor]:
    """`||X_j||_2` per input feature of each module over all calibration tokens (eval mode, no grad).

    Batches are dicts of keyword arguments (HF style), tuples of positional inputs, or one tensor.
    A dict's `attention_mask` keeps padding tokens out wherever a module input is `[batch, tokens, in]`.
    """
    sums: dict[str, torch.Tensor] = {}
    current_mask: list[torch.Tensor | None] = [None]

    def make_hook(name: str) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            part = square_sums(args[0], current_mask[0])
            sums[name] = part if name not in sums else sums[name] + part

        return hook

    handles = [model.get_submodule(n).register_forward_pre_hook(make_hook(n)) for n in module_names]
    try:
        with eval_mode(model), torch.no_grad():
            for batch in batches:
                current_mask[0] = token_mask_of(batch)
                call_model(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    missing = [n for n in module_names if n not in sums]
    if missing:
        raise InvalidArgument(f"calibration never reached {missing[:3]} (no batches, or unused modules)")
    return {n: sums[n].sqrt().to(torch.float32) for n in module_names}


def importance(weight: torch.Tensor, input_norm: torch.Tensor) -> torch.Tensor:
    """Wanda score `|W_ij| * ||X_j||_2` for a weight in the Linear orientation `[out, in]`."""
    if weight.dim() != 2 or input_norm.shape != (weight.shape[1],):
        raise InvalidArgument(
            f"input_norm {tuple(input_norm.shape)} does not match weight {tuple(weight.shape)}"
        )
    return weight.detach().abs().to(torch.float32) * input_norm.to(weight.device, torch.float32)[None, :]


def taskedge_scores(model: nn.Module, input_norms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Importance of every entry of every module in `input_norms`, Conv1D turned to `[out, in]`."""
    return {n: importance(linear_weight(model.get_submodule(n)), norm) for n, norm in input_norms.items()}


def _top_k_per_row(scores: torch.Tensor, k: int) -> torch.Tensor:
    order = torch.argsort(scores, dim=1, descending=True, stable=True)[:, :k]
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(1, order, True)


def _top_n_of_m(scores: torch.Tensor, n: int, m: int, name: str) -> torch.Tensor:
    """Per row, the entries ranking in the top N of their group of M consecutive columns."""
    rows, cols = scores.shape
    if cols % m:
        raise InvalidArgument(f"{name!r}: in_features={cols} is not a multiple of N:M's M={m}")
    groups = scores.reshape(rows, cols // m, m)
    order = torch.argsort(groups, dim=-1, descending=True, stable=True)[..., :n]
    return torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, order, True).reshape(rows, cols)


def _top_k_n_of_m(scores: torch.Tensor, k: int, n: int, m: int, name: str) -> torch.Tensor:
    """The top k entries of every row with at most N in any group of M (see the module docstring)."""
    eligible = _top_n_of_m(scores, n, m, name)
    capacity = n * (scores.shape[1] // m)
    if k > capacity:
        logger.warning(
            "%r: k=%d per row > %d allowed by N:M %d:%d; keeping %d", name, k, capacity, n, m, capacity
        )
    return _top_k_per_row(scores.masked_fill(~eligible, -math.inf), min(k, capacity))


def per_row_k(total_budget_entries: int, total_rows: int) -> int:
    """Entries per output row: `max(1, floor(budget / rows))` (see the module docstring)."""
    if total_budget_entries < total_rows:
        logger.warning(
            "budget of %d entries < %d output rows: one entry per row (%d entries)",
            total_budget_entries,
            total_rows,
            total_rows,
        )
    return max(1, total_budget_entries // total_rows)


def masks_from_scores(
    scores: dict[str, torch.Tensor], k: int, n_m: tuple[int, int] | None = None
) -> dict[str, torch.Tensor]:
    """Top-k entries of every row (k capped at the row length), at most N of every M with `n_m`.

    The one selection rule, shared by the whole-model path and both sides of the split (which
    compute k for the whole model and then select their own layers with it)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InvalidArgument(f"k (entries per row) must be an integer >= 1, got {k!r}")
    if n_m is not None:
        n, m = checked_n_m(n_m)
        return {name: _top_k_n_of_m(s, min(k, s.shape[1]), n, m, name) for name, s in scores.items()}
    return {name: _top_k_per_row(s, min(k, s.shape[1])) for name, s in scores.items()}


def select_taskedge(
    scores: dict[str, torch.Tensor], total_budget_entries: int, n_m: tuple[int, int] | None = None
) -> dict[str, torch.Tensor]:
    """Boolean `[out, in]` masks: the same k top-scored entries in every row of every layer, at
    most N of every M consecutive columns with `n_m`."""
    if not scores:
        raise InvalidArgument("no layers to select from")
    if total_budget_entries < 1:
        raise InvalidArgument(f"total_budget_entries must be >= 1, got {total_budget_entries}")
    k = per_row_k(total_budget_entries, sum(s.shape[0] for s in scores.values()))
    masks = masks_from_scores(scores, k, n_m)
    chosen = sum(int(mask.sum()) for mask in masks.values())
    logger.info("TaskEdge selected %d entries in %d layers (k=%d, n_m=%s)", chosen, len(masks), k, n_m)
    return masks


def budget_entries(model: nn.Module, config: TaskEdgeConfig) -> int:
    """The entry budget: `floor(budget_fraction * all parameters)`, at least 1."""
    return max(1, math.floor(config.budget_fraction * count_parameters(model)))


def taskedge_masks(
    model: nn.Module, batches: Iterable[Any], config: TaskEdgeConfig
) -> dict[str, torch.Tensor]:
    """The whole method: targets, calibration norms, scores, per-row selection; masks for `apply_masks`."""
    names = find_target_modules(model, config.target_modules)
    scores = taskedge_scores(model, collect_input_norms(model, batches, names))
    return select_taskedge(scores, budget_entries(model, config), config.n_m)
