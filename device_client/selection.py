"""Parameter selection on the device's share of a split model, and its saved format.

TaskEdge: the device scores its own target layers from calibration batches, the edge scores the
trunk's from the same forwards; both keep the same k entries per output row, where k spreads the
budget (a share of ALL the model's parameters) evenly over every target row of the whole model.
The device computes k from the model's shapes alone (a `meta` build: no trunk weight is read).

TinyTrain: the device runs its labelled support set forward and backward through the whole split
model; it measures the Fisher potentials of its own layers, the edge those of the trunk's (from
the gradients the backward hands it). The device then fetches the trunk's potentials and costs and
makes ONE greedy choice over every layer of the model under its budgets, exactly as in one
process, and tells the edge which trunk channels to train.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from splitft.methods.common import count_parameters, find_target_modules, linear_shape
from splitft.methods.sparse import apply_masks, load_sparse_deltas, save_sparse_deltas
from splitft.methods.taskedge import (
    TaskEdgeConfig,
    collect_input_norms,
    masks_from_scores,
    per_row_k,
    taskedge_scores,
)
from splitft.methods.tinytrain import (
    LayerCost,
    LossFn,
    TinyTrainConfig,
    TinyTrainSelection,
    fisher_pass,
    select_tinytrain,
)
from splitft.model.loading import build_meta_model, read_config

if TYPE_CHECKING:
    from device_client.autograd import ForwardContext
    from device_client.trunk import RemoteTrunk

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


def tinytrain_split(
    model: nn.Module,
    root_prefix: str,
    root: nn.Module,
    entry_name: str,
    trunk: RemoteTrunk,
    context: ForwardContext,
    batches: list[Any],
    config: TinyTrainConfig,
    loss_fn: LossFn | None,
) -> TinyTrainSelection:
    """Measure both sides over `batches`, choose globally, apply the device's masks, send the trunk's.

    `model` is the whole split model, `root` the device's HF model inside it at `root_prefix`, and
    `entry_name` the name (in `root`) of the module that stands for the trunk.
    """
    names = find_target_modules(root, config.target_modules)
    recorded = [f"{root_prefix}.{n}" for n in names]
    entry = f"{root_prefix}.{entry_name}"  # recorded too: its place in the forward order is the trunk's
    trunk.start_calibration()
    with context.anchored() as anchors:
        measured = fisher_pass(model, batches, loss_fn, recorded + [entry], extra_inputs=anchors)
    layers, _samples, trunk_potentials = trunk.fisher_potentials()
    strip = len(root_prefix) + 1
    potentials = {n[strip:]: measured.potentials[n] for n in recorded}
    potentials.update(trunk_potentials)
    costs: dict[str, LayerCost] = {}
    for name in measured.order:  # forward order, the trunk's layers where the trunk ran
        if name == entry:
            for layer in layers:
                tokens = config.tokens_per_step or int(layer.tokens)
                costs[layer.name] = LayerCost(int(layer.out_features), int(layer.in_features), tokens)
        else:
            out_features, in_features = linear_shape(model.get_submodule(name))
            tokens = config.tokens_per_step or measured.tokens[name]
            costs[name[strip:]] = LayerCost(out_features, in_features, tokens)
    selection = select_tinytrain(potentials, costs, config)
    device = {n: m for n, m in selection.masks.items() if n in set(names)}
    if device:
        apply_masks(root, device, freeze_model=True)
    else:
        root.requires_grad_(False)
    channels = selection.channels.items()
    trunk.select_channels({n: torch.tensor(c) for n, c in channels if n in trunk_potentials})
    return selection


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
