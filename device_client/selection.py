"""Parameter selection (TaskEdge) on the device's share of a split model, and its saved format.

The device scores its own target layers from calibration batches, the edge scores the trunk's
from the same forwards; both keep the same k entries per output row, where k spreads the budget
(a share of ALL the model's parameters) evenly over every target row of the whole model. The
device computes k from the model's shapes alone (a `meta` build: no trunk weight is read).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from splitft.loading import build_meta_model, read_config
from splitft.methods.common import count_parameters, find_target_modules, linear_shape
from splitft.methods.sparse import load_sparse_deltas, save_sparse_deltas
from splitft.methods.taskedge import (
    TaskEdgeConfig,
    collect_input_norms,
    masks_from_scores,
    per_row_k,
    taskedge_scores,
)

logger = logging.getLogger(__name__)
HEAD_FILE = "head.safetensors"  # new head modules (absent from the checkpoint), trained densely


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


def save_selected(
    path: Path, state: dict[str, torch.Tensor], head: Mapping[str, torch.Tensor], metadata: dict[str, Any]
) -> Path:
    """The sparse-delta format (splitft.methods.sparse) plus, when the head is new, head.safetensors."""
    save_sparse_deltas(path, state, metadata)
    if head:
        save_file(
            {k: v.detach().contiguous() for k, v in head.items()},
            str(path / HEAD_FILE),
            metadata={"format": "pt"},
        )
    return path


def load_selected(model: nn.Module, path: str | Path) -> nn.Module:
    """Apply a saved selection adapter to a plain Hugging Face model: new head first, then the deltas."""
    head = Path(path) / HEAD_FILE
    if head.is_file():
        missing, unexpected = model.load_state_dict(load_file(str(head)), strict=False)
        if unexpected:
            raise ValueError(f"{head} holds tensors the model lacks: {unexpected[:3]}")
    load_sparse_deltas(model, path)
    return model
