"""`bench federated --select`: a fair learning-rate choice on the VALIDATION split, then test.

Input: merged `bench federated` reports over the same seeds and config, one per learning rate (the
grid). For every variant separately, the learning rate whose report has the best mean validation
accuracy over the seeds is chosen (ties: the lower rate), and that report's test accuracy is the
variant's figure; the issue's targets are judged on those. Every alternative gets the same grid and
the same budget (one run per rate); no choice ever looks at the test split. A variant only some
reports carry (the AirComp SNRs and `fedavg_shared` a run left out) is chosen among those, and its
`candidates` say how many rates it had. `independent_worst` and `centralized_one_device_steps` have
no choice of their own: they follow `independent_mean` and `centralized` (the same trained runs).
"""

from __future__ import annotations

import json
from typing import Any

from splitft.bench.federated_report import federated_targets
from splitft.errors import InvalidArgument

FOLLOWS = {"independent_worst": "independent_mean", "centralized_one_device_steps": "centralized"}
# What may differ between the reports of one grid: the rate, and which optional rows a run carried.
_VARYING = ("lr", "snr_db", "shared_trunk", "threads")


def select_by_validation(report_jsons: list[str]) -> str:
    """The selection report (JSON): per variant the chosen rate, its validation mean, every rate's
    validation mean, and the chosen run's test accuracy over seeds; the targets on those."""
    reports = [json.loads(text) for text in report_jsons]
    _check_grid(reports)
    order = sorted(range(len(reports)), key=lambda i: reports[i]["config"]["lr"])
    variants: dict[str, dict[str, Any]] = {}
    for name in _names(reports):
        if name in FOLLOWS or name == "initial":
            continue
        candidates = {i: reports[i]["validation_points"][name]["mean"] for i in order
                      if name in reports[i]["validation_points"]}  # fmt: skip
        best = max(candidates, key=lambda i: (candidates[i], -reports[i]["config"]["lr"]))
        variants[name] = _row(reports, best, name, candidates)
    for name, leader in FOLLOWS.items():
        if leader in variants:
            best = next(i for i in order if reports[i]["config"]["lr"] == variants[leader]["lr"])
            variants[name] = _row(reports, best, name, {})
    variants["initial"] = _row(reports, order[0], "initial", {})  # untrained: the same for every lr
    accuracy = {name: row["test"] for name, row in variants.items()}
    return json.dumps(
        {
            "selection": "per variant, the lr of the best mean validation accuracy over seeds "
            "(ties: the lower lr); test reported for that lr only",
            "grid": [reports[i]["config"]["lr"] for i in order],
            "seeds": sorted(run["seed"] for run in reports[0]["seeds"]),
            "config": {k: v for k, v in reports[0]["config"].items() if k not in _VARYING},
            "variants": variants,
            "targets": federated_targets(accuracy),
            "load_average": {str(reports[i]["config"]["lr"]): reports[i]["load_average"] for i in order},
        },
        indent=2,
    )


def _check_grid(reports: list[dict[str, Any]]) -> None:
    for report in reports:
        keys = ("config", "seeds", "accuracy_points", "validation_points", "per_seed_points", "load_average")
        if (
            not isinstance(report, dict)
            or report.get("benchmark") != "federated"
            or any(key not in report for key in keys)
        ):
            raise InvalidArgument(f"--select takes `bench federated` JSON reports with {', '.join(keys)}")
    fixed = [{k: v for k, v in r["config"].items() if k not in _VARYING} for r in reports]
    if any(f != fixed[0] for f in fixed):
        raise InvalidArgument("the reports to select from differ in their config (other than lr and rows)")
    rates = [r["config"]["lr"] for r in reports]
    if len(set(rates)) != len(rates):
        raise InvalidArgument(f"the reports to select from share a learning rate: {sorted(rates)}")
    seeds = [sorted(run["seed"] for run in r["seeds"]) for r in reports]
    if any(s != seeds[0] for s in seeds):
        raise InvalidArgument(f"the reports to select from cover different seeds: {seeds}")
    for needed in ("fedavg", "independent_mean", "centralized"):
        if any(needed not in r["validation_points"] for r in reports):
            raise InvalidArgument(f"every report must carry {needed!r} (the targets' variants)")


def _names(reports: list[dict[str, Any]]) -> list[str]:
    """Every variant of any report, in the first report's order, then the others'."""
    names: list[str] = []
    for report in reports:
        names += [n for n in report["accuracy_points"] if n not in names]
    return names


def _row(reports: list[dict[str, Any]], best: int, name: str, candidates: dict[int, float]) -> dict[str, Any]:
    chosen = reports[best]
    valid = chosen["validation_points"].get(name)
    return {
        "lr": chosen["config"]["lr"],
        "validation_mean": valid["mean"] if valid else None,
        "validation_by_lr": {str(reports[i]["config"]["lr"]): v for i, v in candidates.items()},
        "candidates": len(candidates),
        "test": chosen["accuracy_points"][name],
        "test_per_seed": chosen["per_seed_points"][name],
    }


def markdown_table(selection_json: str) -> str:
    """The selection as Markdown: chosen rate, validation per rate, test of the chosen run, targets."""
    report = json.loads(selection_json)
    grid = [str(lr) for lr in report["grid"]]
    lines = [
        f"lr grid {', '.join(grid)}; seeds {report['seeds']}; chosen per variant on validation, test of "
        "the chosen lr only",
        "",
        "| variant | lr (chosen on validation) | validation mean per lr | test, mean over seeds | min | max "
        "| per seed |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in report["variants"].items():
        by_lr = " / ".join(f"{row['validation_by_lr'][g]:.1f}" if g in row["validation_by_lr"] else "-"
                           for g in grid) if row["validation_by_lr"] else "(follows)"  # fmt: skip
        test = row["test"]
        seeds = " / ".join(f"{v:.1f}" for v in row["test_per_seed"])
        lines.append(
            f"| {name} | {row['lr']:g} | {by_lr} | {test['mean']:.1f}% | {test['min']:.1f}% | "
            f"{test['max']:.1f}% | {seeds} |"
        )
    lines += ["", "| target | measured (points) | met |", "|---|---|---|"]
    for row in report["targets"]:
        name = row["target"].replace("|", "\\|")
        lines.append(f"| {name} | {row['value']:.2f} | {'yes' if row['met'] else 'no'} |")
    return "\n".join(lines)
