"""`bench methods` builders: each method's model on its task, in the worker, ready to train."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from peft import LoraConfig
from torch import nn

from device_client import EdgeConnection, SplitModel
from splitft.bench.methods.config import HEAD_INIT_STD, TINYTRAIN_RATIOS
from splitft.bench.methods.data import Data
from splitft.methods.common import find_target_modules
from splitft.methods.taskedge import TaskEdgeConfig
from splitft.methods.tinytrain import LayerCost, TinyTrainConfig, fisher_pass, layer_costs, select_tinytrain
from splitft.methods.tinytrain.cost import EDGE, sided_cost
from splitft.model.loading import read_config

logger = logging.getLogger(__name__)


@dataclass
class Built:
    """A method's model ready to train, and how to read its figures and close it."""

    model: nn.Module
    split: bool
    selection: dict[str, Any]
    close: Callable[[], None]
    stats: Callable[[], tuple[int, int]] | None  # (bytes sent, bytes received) so far
    trunk_trainable: Callable[[], int]


def _reset_head(model: nn.Module, plan: dict[str, Any], seed: int) -> None:
    """Give a new classification head the same seeded start in every method (and peft's copy of it)."""
    if not plan["new_head"]:
        return
    hits = 0
    generator = torch.Generator().manual_seed(seed + 7919)
    weight: torch.Tensor | None = None
    with torch.no_grad():
        for name, param in model.named_parameters():
            if not re.search(r"(^|\.)classifier\.(.+\.)?(weight|bias)$", name):
                continue
            if name.endswith("bias"):
                param.zero_()
            else:
                if weight is None:
                    weight = torch.randn(param.shape, generator=generator) * HEAD_INIT_STD
                param.copy_(weight)
            hits += 1
    if not hits:
        raise RuntimeError("no classifier parameters found to initialise")


def _edge_connection(spec: dict[str, Any]) -> Any:
    return EdgeConnection(spec["edge_address"], insecure=True)


def _split_model(spec: dict[str, Any], method: Any) -> Any:
    plan = spec["plan"]
    conn = _edge_connection(spec)
    torch.manual_seed(int(spec["seed"]))
    overrides = {"num_labels": plan["num_labels"]} if plan["num_labels"] else None
    model = SplitModel.from_pretrained(
        plan["model_dir"],
        edge=conn,
        model=plan["edge_model"],
        device_layers=plan["device_layers"],
        head_layers=plan["head_layers"],
        method=method,
        trunk_lora=True,
        codec="raw",
        seed=int(spec["seed"]),
        config_overrides=overrides,
    )
    return model, conn


def build_lora(spec: dict[str, Any], data: Data) -> Built:
    plan = spec["plan"]
    rank = int(plan["lora_rank"])
    task_type = "SEQ_CLS" if spec["task"] == "classification" else None
    lora = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=plan["lora_targets"], task_type=task_type)
    model, conn = _split_model(spec, lora)
    _reset_head(model, plan, int(spec["seed"]))
    return _split_built(model, conn, {"rank": rank, "lora_alpha": 2 * rank, "targets": plan["lora_targets"]})


def _split_built(model: Any, conn: Any, details: dict[str, Any]) -> Built:
    """A method that runs across the split: wire bytes and trunk parameters come from the session."""

    def close() -> None:
        model.close()
        conn.close()

    return Built(
        model,
        True,
        details,
        close,
        lambda: (model.stats.bytes_sent, model.stats.bytes_received),
        lambda: int(model.trainable_parameters()["trunk"]),
    )


def build_taskedge(spec: dict[str, Any], data: Data) -> Built:
    plan = spec["plan"]
    model, conn = _split_model(spec, TaskEdgeConfig(budget_fraction=plan["taskedge_fraction"]))
    _reset_head(model, plan, int(spec["seed"]))
    selected = model.calibrate(data.calibration)  # labels are dropped before anything runs
    return _split_built(
        model, conn, {"k_per_row": selected["k_per_row"], "calibration_batches": len(data.calibration)}
    )


def whole_model(spec: dict[str, Any]) -> nn.Module:
    plan = spec["plan"]
    hf_config, family = read_config(plan["model_dir"])
    overrides = {"num_labels": plan["num_labels"]} if plan["num_labels"] else {}
    torch.manual_seed(int(spec["seed"]))
    model_class: Any = family.model_class(hf_config)
    model: nn.Module = model_class.from_pretrained(plan["model_dir"], local_files_only=True, **overrides)
    _reset_head(model, plan, int(spec["seed"]))
    return model


def _trunk_range(plan: dict[str, Any]) -> range:
    return range(int(plan["device_layers"]), int(plan["num_layers"]) - int(plan["head_layers"]))


def _block_of(name: str) -> int | None:
    match = re.search(r"\.(\d+)\.", name)
    return int(match.group(1)) if match else None


def size_tinytrain_budget(
    model: nn.Module, support: list[Any], budget: int, trunk: range | None = None
) -> tuple[float, int]:
    """The memory budget (bytes, no compute limit; the same number for the edge's layers) whose
    TinyTrain selection is closest to `budget` trainable entries (log scale), and that selection's
    size. Scans a geometric grid. `trunk`: the blocks on the edge, priced as the split prices them
    (their state and inputs on the edge's budget; the device pays what it saves after them)."""
    names = find_target_modules(model)
    measured = fisher_pass(model, support, None, names)
    costs = _sided(layer_costs(model, measured), trunk)
    lowest = min(c.memory_bytes(1, 4) for c in costs.values())
    every = sided_cost(costs, {n: c.out_features for n, c in costs.items()}, 4)
    highest = max(every.memory_bytes, every.edge_memory_bytes)  # everything fits both budgets
    best: tuple[float, float, int] | None = None  # (distance, memory budget, entries)
    points = 400  # fine enough that the nearest selection is found, with the bench's finer ratios
    for i in range(points + 1):
        memory = lowest * (highest / lowest) ** (i / points)
        config = _tinytrain_config(memory)
        selection = select_tinytrain(measured.potentials, costs, config)
        entries = sum(int(m.sum()) for m in selection.masks.values())
        if entries == 0:
            continue
        distance = abs(math.log(entries / budget))
        if best is None or distance < best[0]:
            best = (distance, memory, entries)
    if best is None:
        raise RuntimeError("TinyTrain selected nothing at any memory budget")
    return best[1], best[2]


def _tinytrain_config(memory: float) -> TinyTrainConfig:
    """TinyTrain with no compute limit, the same memory budget on both sides, the bench's ratios."""
    return TinyTrainConfig(memory, math.inf, edge_memory_budget_bytes=memory, channel_ratios=TINYTRAIN_RATIOS)


def _sided(costs: dict[str, LayerCost], trunk: range | None) -> dict[str, LayerCost]:
    """The trunk's layers on the edge; the device saves, once one trains, what it saves after the trunk
    (approximated by the first device layer after it, as one process measured it)."""
    if trunk is None:
        return costs
    after = [c for n, c in costs.items() if (_block_of(n) or -1) >= trunk.stop]
    first = after[0] if after else LayerCost(1, 1, 1)
    return {
        n: replace(
            c,
            side=EDGE,
            saved_after=first.saved_after,
            largest_saved=first.largest_saved,
            forward_peak=first.forward_peak,
            backward_peak=first.backward_peak,
            input_id=None,
        )
        if _block_of(n) in trunk
        else c
        for n, c in costs.items()
    }


def size_tinytrain(spec: dict[str, Any], data: Data) -> dict[str, Any]:
    """Before the memory baseline: the memory budget matching the entry budget (whole-model pass)."""
    model = whole_model(spec)
    plan = spec["plan"]
    memory, sized = size_tinytrain_budget(model, data.calibration, int(plan["budget"]), _trunk_range(plan))
    del model
    return {**spec, "tinytrain_memory_budget": memory, "tinytrain_sized_entries": sized}


def build_tinytrain(spec: dict[str, Any], data: Data) -> Built:
    plan = spec["plan"]
    memory = float(spec["tinytrain_memory_budget"])
    model, conn = _split_model(spec, _tinytrain_config(memory))
    _reset_head(model, plan, int(spec["seed"]))
    model.calibrate(data.calibration)  # labelled: the loss is computed on the device
    selection = model.selection_report
    assert selection is not None
    trunk = _trunk_range(plan)
    in_trunk = sum(int(m.sum()) for n, m in selection.masks.items() if _block_of(n) in trunk)
    info = {
        "memory_budget_bytes": round(memory),
        "selected_memory_bytes": selection.memory_bytes,
        "selected_macs": selection.macs,
        "selected_edge_memory_bytes": selection.edge_memory_bytes,
        "selected_edge_macs": selection.edge_macs,
        "layers": {n: selection.ratios[n] for n in selection.masks},
        "entries_in_trunk": in_trunk,
        "support_batches": len(data.calibration),
    }
    entries = sum(int(m.sum()) for m in selection.masks.values())
    if int(spec["tinytrain_sized_entries"]) != entries:  # the sizing approximates the device's saved bytes
        logger.warning(
            "TinyTrain across the split chose %d entries, sized on %s",
            entries,
            spec["tinytrain_sized_entries"],
        )
    return _split_built(model, conn, info)
