"""`bench methods` baselines, each on the whole model in ONE process (a split run trains the same
model, as tests/system/test_equivalence.py checks; these rows measure accuracy, not the split):

* `random`: TaskEdge's k entries per row of every target Linear, at seeded random positions;
* `magnitude`: the same k per row, the largest |W| (TaskEdge's ablation: no activation norm);
* `tinytrain_nocost`: TinyTrain's Fisher channel potentials alone, no memory or MAC cost terms:
  whole output channels of any target layer, best potential first, up to the matched budget;
* `full`: every parameter;
* `head_only`: the task head alone.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from splitft.bench.methods.builders import Built, whole_model
from splitft.bench.methods.config import head_module
from splitft.bench.methods.data import Data
from splitft.methods.common import find_target_modules
from splitft.methods.sparse import apply_masks
from splitft.methods.taskedge import masks_from_scores
from splitft.methods.tinytrain import fisher_pass


def _masked(
    spec: dict[str, Any], model: nn.Module, masks: dict[str, torch.Tensor], info: dict[str, Any]
) -> Built:
    apply_masks(model, masks)
    if spec["plan"]["new_head"]:  # a new head trains in every method, as across the split
        model.get_submodule(head_module(spec["task"])).requires_grad_(True)
    entries = sum(int(m.sum()) for m in masks.values())
    return Built(model, False, {**info, "entries": entries}, lambda: None, None, lambda: 0)


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    weights: dict[str, torch.Tensor] = {}
    for name in find_target_modules(model):
        weight = model.get_submodule(name).weight
        assert isinstance(weight, torch.Tensor)
        weights[name] = weight.detach()
    return weights


def build_random(spec: dict[str, Any], data: Data) -> Built:
    model = whole_model(spec)
    generator = torch.Generator().manual_seed(int(spec["seed"]) + 104_729)
    scores = {n: torch.rand(w.shape, generator=generator) for n, w in _weights(model).items()}
    k = int(spec["plan"]["taskedge_k"])
    return _masked(spec, model, masks_from_scores(scores, k), {"k_per_row": k})


def build_magnitude(spec: dict[str, Any], data: Data) -> Built:
    model = whole_model(spec)
    scores = {n: w.abs() for n, w in _weights(model).items()}
    k = int(spec["plan"]["taskedge_k"])
    return _masked(spec, model, masks_from_scores(scores, k), {"k_per_row": k})


def build_tinytrain_nocost(spec: dict[str, Any], data: Data) -> Built:
    model = whole_model(spec)
    names = find_target_modules(model)
    potentials = fisher_pass(model, data.calibration, None, names).potentials
    model.zero_grad(set_to_none=True)
    weights = _weights(model)
    ranked = sorted(
        ((float(p), name, row) for name in names for row, p in enumerate(potentials[name])),
        key=lambda item: (-item[0], item[1], item[2]),
    )
    budget, taken = int(spec["plan"]["budget"]), 0
    masks = {n: torch.zeros_like(w, dtype=torch.bool) for n, w in weights.items()}
    for _, name, row in ranked:
        width = weights[name].shape[1]
        if abs(taken + width - budget) > abs(taken - budget):  # the next channel overshoots more
            break
        masks[name][row] = True
        taken += width
    masks = {n: m for n, m in masks.items() if bool(m.any())}
    layers = {n: round(float(m.any(dim=1).float().mean()), 4) for n, m in masks.items()}
    return _masked(spec, model, masks, {"layers": layers})


def build_full(spec: dict[str, Any], data: Data) -> Built:
    model = whole_model(spec)
    model.requires_grad_(True)
    return Built(model, False, {"module": "every parameter"}, lambda: None, None, lambda: 0)


def build_head_only(spec: dict[str, Any], data: Data) -> Built:
    model = whole_model(spec)
    model.requires_grad_(False)
    model.get_submodule(head_module(spec["task"])).requires_grad_(True)
    return Built(model, False, {"module": head_module(spec["task"])}, lambda: None, None, lambda: 0)
