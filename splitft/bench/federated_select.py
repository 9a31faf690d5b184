"""`bench federated --select`: a fair choice of settings on the VALIDATION split, then test.

Input: merged `bench federated` reports over the same seeds and config, one per setting of the grid:
a learning rate, and the server's step (`--server-lr`, `--server-momentum`: FedAvgM) where the grid
varies it. For every variant separately, the setting whose report has the best mean validation
accuracy over the seeds is chosen (ties: the lower rate, then plain FedAvg's server step), and that
report's test accuracy is the variant's figure; the issue's targets are judged on those. Every
alternative gets the same grid and the same budget (one run per setting); no choice ever looks at
the test split. The rows the server's step does not touch (independent, centralized) are the same
in every report of one rate, so a grid over momentum leaves their choice to the rate. A variant only some
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
_VARYING = ("lr", "lr_schedule", "server_lr", "server_momentum", "snr_db", "shared_trunk", "threads")
Setting = tuple[float, float, float, str]  # lr, server lr, server momentum, lr schedule


def _setting(report: dict[str, Any]) -> Setting:
    """A report's setting; the defaults (plain FedAvg, a constant lr) where an older report has none."""
    config = report["config"]
    return (
        float(config["lr"]),
        float(config.get("server_lr", 1.0)),
        float(config.get("server_momentum", 0.0)),
        str(config.get("lr_schedule", "constant")),
    )


def _label(setting: Setting) -> str:
    """`0.002`, or `0.002 m0.5` / `0.002 m0.5 s2` with the server's step, `0.002 cosine` with a schedule."""
    lr, server_lr, momentum, schedule = setting
    return (
        f"{lr:g}"
        + (f" m{momentum:g}" if momentum else "")
        + (f" s{server_lr:g}" if server_lr != 1 else "")
        + (f" {schedule}" if schedule != "constant" else "")
    )


def select_by_validation(report_jsons: list[str]) -> str:
    """The selection report (JSON): per variant the chosen rate, its validation mean, every rate's
    validation mean, and the chosen run's test accuracy over seeds; the targets on those."""
    reports = [json.loads(text) for text in report_jsons]
    _check_grid(reports)
    settings = [_setting(report) for report in reports]
    # the lower rate first, then the smaller server step, then a constant rate: ties go to the simpler
    order = sorted(
        range(len(reports)),
        key=lambda i: (settings[i][0], settings[i][2], abs(settings[i][1] - 1), settings[i][3] != "constant"),
    )
    variants: dict[str, dict[str, Any]] = {}
    for name in _names(reports):
        if name in FOLLOWS or name == "initial":
            continue
        candidates = {i: reports[i]["validation_points"][name]["mean"] for i in order
                      if name in reports[i]["validation_points"]}  # fmt: skip
        best = max(candidates, key=lambda i: (candidates[i], -order.index(i)))
        variants[name] = _row(reports, best, name, candidates)
    for name, leader in FOLLOWS.items():
        if leader in variants:
            best = next(i for i in order if _label(settings[i]) == variants[leader]["setting"])
            variants[name] = _row(reports, best, name, {})
    variants["initial"] = _row(reports, order[0], "initial", {})  # untrained: the same for every lr
    accuracy = {name: row["test"] for name, row in variants.items()}
    return json.dumps(
        {
            "selection": "per variant, the setting (lr; server momentum m, server lr s; lr schedule) of "
            "the best mean validation accuracy over seeds (ties: the lower lr, then the smaller server "
            "step, then a constant lr); test reported for that setting only",
            "grid": [_label(settings[i]) for i in order],
            "seeds": sorted(run["seed"] for run in reports[0]["seeds"]),
            "config": {k: v for k, v in reports[0]["config"].items() if k not in _VARYING},
            "variants": variants,
            "targets": federated_targets(accuracy),
            "load_average": {_label(settings[i]): reports[i]["load_average"] for i in order},
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
    settings = [_label(_setting(r)) for r in reports]
    if len(set(settings)) != len(settings):
        raise InvalidArgument(
            f"the reports to select from share a setting (lr, server step, schedule): {sorted(settings)}"
        )
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
    lr, server_lr, momentum, schedule = _setting(chosen)
    return {
        "setting": _label((lr, server_lr, momentum, schedule)),
        "lr": lr,
        "lr_schedule": schedule,
        "server_lr": server_lr,
        "server_momentum": momentum,
        "validation_mean": valid["mean"] if valid else None,
        "validation_by_setting": {_label(_setting(reports[i])): v for i, v in candidates.items()},
        "candidates": len(candidates),
        "test": chosen["accuracy_points"][name],
        "test_per_seed": chosen["per_seed_points"][name],
    }


def markdown_table(selection_json: str) -> str:
    """The selection as Markdown: chosen rate, validation per rate, test of the chosen run, targets."""
    report = json.loads(selection_json)
    grid = list(report["grid"])
    lines = [
        f"grid (lr; m: server momentum, s: server lr; schedule) {', '.join(grid)}; seeds {report['seeds']}; "
        "chosen per variant on validation, test of the chosen setting only",
        "",
        "| variant | setting (chosen on validation) | validation mean per setting | test, mean over seeds "
        "| min | max | per seed |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in report["variants"].items():
        by = row["validation_by_setting"]
        by_setting = " / ".join(f"{by[g]:.1f}" if g in by else "-" for g in grid) if by else "(follows)"
        test = row["test"]
        seeds = " / ".join(f"{v:.1f}" for v in row["test_per_seed"])
        lines.append(
            f"| {name} | {row['setting']} | {by_setting} | {test['mean']:.1f}% | {test['min']:.1f}% | "
            f"{test['max']:.1f}% | {seeds} |"
        )
    lines += ["", "| target | measured (points) | met |", "|---|---|---|"]
    for row in report["targets"]:
        name = row["target"].replace("|", "\\|")
        lines.append(f"| {name} | {row['value']:.2f} | {'yes' if row['met'] else 'no'} |")
    return "\n".join(lines)
