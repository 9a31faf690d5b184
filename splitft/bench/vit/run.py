"""`splitft bench vit`: the parent: pretrain (or load) one backbone per seed, plan the budgets, run
every (task, method, budget) with the rate chosen on validation, report (JSON, Markdown table)."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from splitft.bench.methods.budgets import budget_ratio
from splitft.bench.methods.report import spread
from splitft.bench.vit.backbone import pretrained_backbone
from splitft.bench.vit.budgets import Budget, plan_budgets, taskedge_targets
from splitft.bench.vit.config import MATCHED_METHODS, VitBenchConfig
from splitft.bench.vit.data import PRETRAIN_CLASSES, TASK_CLASSES, TaskData, task_data
from splitft.bench.vit.finetune import Recipe, load_for_task, run_one

logger = logging.getLogger(__name__)

NOTES = (
    "Backbone: ViTForImageClassification from a config, pretrained in this run (or read from the "
    "cache, keyed by architecture, recipe and seed) on sklearn digits 0-4; the tasks use only digits 5-9.",
    "Splits: each task's images have one fixed stratified train / validation / test split; every choice "
    "(the learning rate, grid lr_multipliers x lr, first seed) is made on validation, test is reported.",
    "Budget: shares of the backbone's parameters (the head excluded); the matched budget is TaskEdge's "
    "k x rows (targets: every block's MLP down-projection) closest to the share; entries exclude the "
    "new head, which trains in every method.",
    "Seeds: one backbone per seed, and that seed's head init, data order and random selection.",
    "Everything runs in one process (one-process TaskEdge trains what a split run trains).",
)


def _backbone_parameters(backbone: Path) -> tuple[int, int, list[str]]:
    """The backbone's parameter count (head excluded), the whole model's, and TaskEdge's targets."""
    model = load_for_task(backbone, len(PRETRAIN_CLASSES), 0)
    return (
        sum(p.numel() for p in model.vit.parameters()),
        sum(p.numel() for p in model.parameters()),
        (taskedge_targets(model)),
    )


def run_vit_bench(config: VitBenchConfig) -> str:
    """Run the comparison; return the JSON report."""
    started = time.perf_counter()
    caller_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        backbones = {seed: pretrained_backbone(config, seed) for seed in config.seeds}
        first = backbones[config.seed][0]
        backbone_params, model_params, targets = _backbone_parameters(first)
        budgets = plan_budgets(
            load_for_task(first, len(PRETRAIN_CLASSES), 0), backbone_params, config.budgets
        )
        tasks = {}
        for name in config.tasks:
            data = task_data(name)
            rows = [_row(config, backbones, data, m, b) for m, b in _plan(config, budgets)]
            tasks[name] = {
                "num_labels": data.num_labels,
                "images": {
                    "train": len(data.train),
                    "validation": len(data.validation),
                    "test": len(data.test),
                },
                "rows": rows,
            }
    finally:
        torch.set_num_threads(caller_threads)
    report = {
        "benchmark": "vit",
        "config": asdict(config),
        "backbone": {
            "parameters": backbone_params,
            "model_parameters": model_params,
            "taskedge_targets": targets,
            "pretraining": {str(seed): info for seed, (_, info) in backbones.items()},
        },
        "data": {
            "source": "sklearn.datasets.load_digits (8x8)",
            "pretrain_classes": list(PRETRAIN_CLASSES),
            "task_classes": list(TASK_CLASSES),
        },
        "budgets": [b.summary(backbone_params) for b in budgets],
        "tasks": tasks,
        "notes": list(NOTES),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "seconds": round(time.perf_counter() - started, 1),
    }
    return json.dumps(report, indent=2)


def _plan(config: VitBenchConfig, budgets: list[Budget]) -> list[tuple[str, Budget | None]]:
    """Every (method, budget) to run: the matched methods at each budget, the others once."""
    return [
        (method, budget)
        for method in config.methods
        for budget in (budgets if method in MATCHED_METHODS else [None])
    ]


def _row(
    config: VitBenchConfig,
    backbones: dict[int, tuple[Path, dict[str, Any]]],
    data: TaskData,
    method: str,
    budget: Budget | None,
) -> dict[str, Any]:
    """One (method, budget): the rate chosen on validation with the first seed, the other seeds at it."""

    def run(seed: int, lr: float) -> dict[str, Any]:
        recipe = Recipe(lr, config.epochs, config.batch_size, config.calibration_batches)
        logger.info(
            "bench vit: %s / %s @ %s, lr %.3g, seed %d",
            data.name,
            method,
            budget.share if budget else "-",
            lr,
            seed,
        )
        return run_one(backbones[seed][0], data, method, budget, recipe, seed)

    tried = {m: run(config.seed, config.lr[method] * m) for m in config.lr_multipliers}
    multiplier = max(tried, key=lambda m: (tried[m]["validation_after"], -tried[m]["validation_loss"]))
    chosen = config.lr[method] * multiplier
    runs = [tried[multiplier]] + [run(seed, chosen) for seed in config.seeds[1:]]
    entries = [int(r["entries"]) for r in runs]
    row: dict[str, Any] = {
        "method": method,
        "budget_share": budget.share if budget else None,
        "matched_entries": budget.entries if budget else None,
        "entries": entries[0],
        "budget": budget_ratio(entries[0], budget.entries) if budget else None,
        "lr": chosen,
        "lr_multiplier": multiplier,
        "lr_edge": grid_edge(multiplier, config.lr_multipliers),
        "lr_validation": {f"{r['lr']:.3g}": r["validation_after"] for r in tried.values()},
        "seeds": list(config.seeds),
        "test_before": spread([r["test_before"] for r in runs]),
        "test": spread([r["test_after"] for r in runs]),
        "validation": spread([r["validation_after"] for r in runs]),
        "seconds": spread([r["seconds"] for r in runs]),
        "runs": runs,
    }
    if len(set(entries)) > 1:  # TaskEdge's k and LoRA's shape do not depend on the seed
        raise RuntimeError(f"{method}: trainable entries differ between seeds: {entries}")
    return row


def grid_edge(multiplier: float, grid: tuple[float, ...]) -> str | None:
    """'top' or 'bottom' when the chosen rate is the grid's end (a better one may lie beyond), else None."""
    if len(grid) < 2:
        return None  # one rate: nothing was chosen
    return "top" if multiplier == max(grid) else "bottom" if multiplier == min(grid) else None


def _lr_cell(row: dict[str, Any]) -> str:
    edge = f", {row['lr_edge']} edge" if row.get("lr_edge") else ""
    return (
        f"{row['lr']:.3g} (x{row['lr_multiplier']:.3g}{edge})"
        if "lr_multiplier" in row
        else f"{row['lr']:.3g}"
    )


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def markdown_table(report_json: str | dict[str, Any]) -> str:
    """One table: per task, budget and method, test accuracy mean ± std (min-max) over seeds."""
    report = json.loads(report_json) if isinstance(report_json, str) else report_json
    backbone = report["backbone"]["parameters"]
    lines = [
        "| task | budget (share of backbone) | method | trainable entries (ratio to budget) "
        "| lr (multiplier; validation) "
        "| test accuracy before -> after, mean ± std (min-max) | validation after |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for task, info in report["tasks"].items():
        for row in info["rows"]:
            share = (
                "-"
                if row["budget_share"] is None
                else (
                    f"{100 * row['budget_share']:g}% ({row['matched_entries']:,} = "
                    f"{100 * row['matched_entries'] / backbone:.3f}%)"
                )
            )
            size = f"{row['entries']:,}" + (f" ({row['budget']['ratio']:.3f})" if row["budget"] else "")
            test = row["test"]
            lines.append(
                f"| {task} | {share} | {row['method']} | {size} | {_lr_cell(row)} "
                f"| {_pct(row['test_before']['mean'])} -> {_pct(test['mean'])} ± {_pct(test['std'])} "
                f"({_pct(test['min'])}-{_pct(test['max'])}, n={len(row['seeds'])}) "
                f"| {_pct(row['validation']['mean'])} |"
            )
    return "\n".join(lines)
