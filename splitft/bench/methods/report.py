"""The `bench methods` report: one method's runs summarised over seeds, and the Markdown table."""

from __future__ import annotations

import json
import statistics
from typing import Any

from splitft.bench.methods.budgets import budget_ratio
from splitft.bench.methods.config import BUDGET_MATCHED


def validation_key(result: dict[str, Any], task: str) -> tuple[float, float]:
    """Sort key of a run by its VALIDATION figures, best first: accuracy then loss (classification),
    loss (causal LM)."""
    validation = result["validation_after"]
    if task == "classification":
        return (-validation["accuracy"], validation["loss"])
    return (validation["loss"], 0.0)


def spread(values: list[float]) -> dict[str, Any]:
    """Mean, sample standard deviation (0 for one value), min and max of per-seed figures."""
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
        "per_seed": values,
    }


def summarize_method(
    runs: list[dict[str, Any]], tried: dict[float, dict[str, Any]], budget: int, method: str
) -> dict[str, Any]:
    """One method's figures: the chosen rate, test and validation over seeds, its budget ratio, and
    every run (the first seed's at the chosen rate first)."""
    first = runs[0]
    per_seed = [int(r["trainable"]["method"]) for r in runs]  # TinyTrain's may differ by seed
    entries = max(per_seed, key=lambda e: abs(e / budget - 1.0))  # the farthest from the budget
    return {
        "method": method,
        "split": first["split"],
        "budget_matched": method in BUDGET_MATCHED,
        "lr": first["lr"],
        "lr_validation": {f"{lr:.3g}": r["metric"]["validation"] for lr, r in tried.items()},
        "seeds": [r["seed"] for r in runs],
        "metric_name": first["metric"]["name"],
        "before": first["metric"]["before"],
        "test": spread([r["metric"]["after"] for r in runs]),
        "validation": spread([r["metric"]["validation"] for r in runs]),
        "trainable": first["trainable"],
        "budget": {
            "entries": entries,
            "entries_per_seed": per_seed,
            "matched_budget": budget,
            **budget_ratio(entries, budget),
        },
        "train_peak_delta_mib": spread([r["memory"]["train_peak_delta_mib"] for r in runs]),
        "wire": first["wire"],
        "seconds": spread([r["seconds"] for r in runs]),
        "runs": runs,
    }


def _metric_text(value: dict[str, Any], accuracy: bool) -> str:
    if accuracy:
        return f"{value['mean']:.1%} ± {value['std']:.1%}"
    return f"{value['mean']:.3f} ± {value['std']:.3f}"


def _size_text(r: dict[str, Any]) -> str:
    """Trainable entries over the seeds (a range where they differ) and their ratio to the budget."""
    b = r["budget"]
    per_seed = [int(run["trainable"]["method"]) for run in r["runs"]]
    low, high = min(per_seed), max(per_seed)
    entries = f"{low:,}" if low == high else f"{low:,} to {high:,}"
    if not r["budget_matched"]:
        return f"{entries} (not matched)"
    ratios = f"{low / b['matched_budget']:.3f}" + (
        "" if low == high else f" to {high / b['matched_budget']:.3f}"
    )
    within = all(abs(e / b["matched_budget"] - 1.0) <= 0.05 for e in per_seed)
    return f"{entries} ({ratios}{'' if within else ', off by > 5%'})"


def markdown_table(report_json: str | dict[str, Any]) -> str:
    """The report's figures as one Markdown table (for docs and the terminal): test metric mean ±
    sample std over seeds, at the rate chosen on validation."""
    report = json.loads(report_json) if isinstance(report_json, str) else report_json
    head = (
        "| task | method | split | trainable entries (ratio to budget) | lr (chosen on validation) "
        "| test metric before -> after, mean ± std over seeds | validation after "
        "| device train peak MiB | seconds per run |"
    )
    rows = [head, "|" + " --- |" * 9]
    for task, info in report["tasks"].items():
        accuracy = info["metric"] == "test_accuracy"
        name = "accuracy" if accuracy else "loss"
        for method, r in info["methods"].items():
            size = _size_text(r)
            before = f"{r['before']:.1%}" if accuracy else f"{r['before']:.3f}"
            rows.append(
                f"| {task} | {method} | {'yes' if r['split'] else 'no'} | {size} | {r['lr']:.3g} "
                f"| {name} {before} -> {_metric_text(r['test'], accuracy)} (n={len(r['seeds'])}) "
                f"| {_metric_text(r['validation'], accuracy)} "
                f"| {r['train_peak_delta_mib']['mean']:.0f} | {r['seconds']['mean']:.1f} |"
            )
    return "\n".join(rows)
