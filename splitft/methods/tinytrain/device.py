"""TinyTrain's device half: measure both sides, choose once over the whole model, tell the edge.

The device runs its labelled support set forward and backward through the whole split model; it
measures the Fisher potentials of its own layers, the edge those of the trunk's (from the
gradients the backward hands it). The device then fetches the trunk's potentials and costs and
makes ONE greedy choice over every layer of the model under its budgets, exactly as in one
process, and tells the edge which trunk channels to train.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from splitft.errors import InvalidArgument
from splitft.methods.common import find_target_modules, linear_shape
from splitft.methods.port import Calibrated, SplitView, TrunkLayerInfo
from splitft.methods.sparse import apply_masks
from splitft.methods.tinytrain.config import TinyTrainConfig
from splitft.methods.tinytrain.cost import EDGE, LayerCost
from splitft.methods.tinytrain.fisher import (
    FisherPass,
    LossFn,
    TinyTrainSelection,
    fisher_pass,
    measured_cost,
    select_tinytrain,
)

logger = logging.getLogger(__name__)


def _costs(
    split: SplitView,
    measured: FisherPass,
    entry: str,
    layers: Sequence[TrunkLayerInfo],
    config: TinyTrainConfig,
) -> dict[str, LayerCost]:
    """Every layer's cost in forward order, the trunk's layers where the trunk ran.

    The trunk's layers train on the edge; the activations the device saves once one of them
    trains are those it saved from the trunk's call on (measured at `entry`).
    """
    strip = len(split.root_prefix) + 1
    costs: dict[str, LayerCost] = {}
    for name in measured.order:
        if name == entry:
            at_entry = measured_cost(measured, entry, (1, 1), config.tokens_per_step)
            for layer in layers:
                tokens = config.tokens_per_step or int(layer.tokens)
                costs[layer.name] = LayerCost(
                    int(layer.out_features),
                    int(layer.in_features),
                    tokens,
                    side=EDGE,
                    saved_after=at_entry.saved_after,
                    largest_saved=at_entry.largest_saved,
                    forward_peak=at_entry.forward_peak,
                    backward_peak=at_entry.backward_peak,
                )
        else:
            shape = linear_shape(split.model.get_submodule(name))
            costs[name[strip:]] = measured_cost(measured, name, shape, config.tokens_per_step)
    return costs


def tinytrain_split(
    split: SplitView, batches: list[Any], config: TinyTrainConfig, loss_fn: LossFn | None
) -> TinyTrainSelection:
    """Measure both sides over `batches`, choose globally, apply the device's masks, send the trunk's."""
    names = find_target_modules(split.root, config.target_modules)
    recorded = [split.in_model(n) for n in names]
    entry = split.in_model(split.entry_name)  # recorded too: its place in the forward order is the trunk's
    split.trunk.start_calibration()
    with split.anchored() as anchors:
        measured = fisher_pass(split.model, batches, loss_fn, recorded + [entry], extra_inputs=anchors)
    layers, _samples, trunk_potentials = split.trunk.fisher_potentials()
    strip = len(split.root_prefix) + 1
    potentials = {n[strip:]: measured.potentials[n] for n in recorded}
    potentials.update(trunk_potentials)
    selection = select_tinytrain(potentials, _costs(split, measured, entry, layers, config), config)
    device = {n: m for n, m in selection.masks.items() if n in set(names)}
    if device:
        apply_masks(split.root, device, freeze_model=True)
    else:
        split.root.requires_grad_(False)
    channels = selection.channels.items()
    split.trunk.select_channels({n: torch.tensor(c) for n, c in channels if n in trunk_potentials})
    return selection


def calibrate(
    split: SplitView, batches: list[Any], config: TinyTrainConfig, loss_fn: LossFn | None = None
) -> Calibrated:
    """Select on both sides from a labelled support set (or `loss_fn(outputs, batch)`)."""
    if loss_fn is None and any("labels" not in batch for batch in batches):
        raise InvalidArgument("TinyTrain calibrates on a labelled support set: give labels or a loss_fn")
    chosen = tinytrain_split(split, batches, config, loss_fn)
    device = sum(p.numel() for p in split.root.parameters() if p.requires_grad)
    trunk = split.trunk.trainable_parameters
    logger.info("TinyTrain: %d layers, %d device entries, %d trunk entries", len(chosen.masks), device, trunk)
    return Calibrated({"layers": len(chosen.masks), "device": device, "trunk": trunk}, report=chosen)
