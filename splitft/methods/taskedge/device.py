"""TaskEdge's device half: score the device's layers, let the edge score the trunk's with the same k.

The device scores its own target layers from calibration batches, the edge scores the trunk's from
the same forwards; both keep the same k entries per output row, where k spreads the budget (a
share of ALL the model's parameters) evenly over every target row of the whole model. The device
computes k from the model's shapes alone (a `meta` build: no trunk weight is read).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from splitft.methods.common import count_parameters, find_target_modules, linear_shape
from splitft.methods.port import Calibrated, SplitView
from splitft.methods.sparse import apply_masks
from splitft.methods.taskedge.config import TaskEdgeConfig
from splitft.methods.taskedge.scoring import (
    collect_input_norms,
    masks_from_scores,
    per_row_k,
    taskedge_scores,
)
from splitft.model.loading import build_meta_model, read_config

logger = logging.getLogger(__name__)


def global_k(model_dir: str | Path, config: TaskEdgeConfig, overrides: dict[str, Any]) -> int:
    """TaskEdge's entries per row for the WHOLE model: budget share of all parameters / all target rows."""
    hf_config, family = read_config(model_dir)
    whole = build_meta_model(hf_config, family, **overrides)
    rows = sum(
        linear_shape(whole.get_submodule(n))[0] for n in find_target_modules(whole, config.target_modules)
    )
    budget = max(1, int(config.budget_fraction * count_parameters(whole)))
    return per_row_k(budget, rows)


def device_masks(
    model: nn.Module,
    root_prefix: str,
    root: nn.Module,
    batches: list[dict[str, Any]],
    config: TaskEdgeConfig,
    k: int,
) -> dict[str, torch.Tensor]:
    """Score the device's target layers over `batches` run through the whole split `model`."""
    names = find_target_modules(root, config.target_modules)
    norms = collect_input_norms(model, batches, [f"{root_prefix}.{n}" for n in names])
    scores = taskedge_scores(root, {n: norms[f"{root_prefix}.{n}"] for n in names})
    return masks_from_scores(scores, k, config.n_m)


def calibrate(
    split: SplitView, batches: list[Any], config: TaskEdgeConfig, loss_fn: Any = None
) -> Calibrated:
    """Select on both sides: labels are dropped, the scores need none (`loss_fn` is not used)."""
    unlabeled = [{k: v for k, v in batch.items() if k != "labels"} for batch in batches]
    k = global_k(split.model_dir, config, split.overrides)
    split.trunk.start_calibration()
    masks = device_masks(split.model, split.root_prefix, split.root, unlabeled, config, k)
    apply_masks(split.root, masks, freeze_model=True)
    trunk_selected = split.trunk.select_parameters(k)
    device_selected = sum(int(m.sum()) for m in masks.values())
    logger.info("TaskEdge k=%d: %d device entries, %d trunk entries", k, device_selected, trunk_selected)
    return Calibrated({"k_per_row": k, "device": device_selected, "trunk": trunk_selected})
