"""`bench federated`'s report: accuracy per variant over seeds, the issue's targets (met or not),
bytes per round, and the Markdown tables `--markdown` prints."""

from __future__ import annotations

import json
import statistics
from types import SimpleNamespace
from typing import Any

from splitft.errors import InvalidArgument

DEFINITIONS = {
    "steps": "every device takes rounds * local_steps optimizer steps in every variant",
    "independent": "each device's own adapter after all its steps on its own shard",
    "fedavg": "the global adapter after the last round (whole adapter: device and trunk parts)",
    "aircomp": "the same rounds aggregated by simulated AirComp (Rayleigh fading, truncation 'auto': "
    "the threshold with the least expected error at the SNR and device count, for 4 devices 0.3 at 0 dB, "
    "0.1 at 10 dB, 0.01 at 20 dB; each round records it)",
    "centralized": "one device with all the training data and devices * rounds * local_steps steps "
    "(the sum over devices: the same compute and examples seen as FedAvg); "
    "centralized_one_device_steps: the same with rounds * local_steps steps",
    "trunk_adapter_averaged": "what the fedavg and aircomp rows measure",
    "fedavg_shared": 'trunk_adapter "shared": one trunk adapter per round on the edge, stepped by every '
    "device in turn (the bench trains them one after another), FedAvg of the device parts; the trunk "
    "part is the adapter after the round's last step",
}


def _points(values: list[float]) -> dict[str, float]:
    """Mean, min and max over seeds, in accuracy points (percent)."""
    return {
        "mean": round(100 * statistics.fmean(values), 2),
        "min": round(100 * min(values), 2),
        "max": round(100 * max(values), 2),
    }


def _accuracies(runs: list[dict[str, Any]], on: str = "test") -> dict[str, list[float]]:
    """Accuracy per variant and seed on the test split (the reported figures) or on validation."""
    v = "" if on == "test" else "validation_"
    rows: dict[str, list[float]] = {}
    for run in runs:
        for name, result in run["results"].items():
            if name == "independent":
                rows.setdefault("independent_mean", []).append(result[f"{v}mean"])
                if not v:
                    rows.setdefault("independent_worst", []).append(result["worst"])
            elif name == "centralized":
                rows.setdefault("centralized", []).append(result[f"{v}accuracy"])
                rows.setdefault("centralized_one_device_steps", []).append(
                    result[f"{v}accuracy_one_device_steps"]
                )
            else:
                rows.setdefault(name, []).append(result[f"{v}accuracy"])
    rows["initial"] = [run[f"initial_{v}accuracy"] for run in runs]
    return rows


def _curves(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, float]]]:
    """Per round, mean over seeds: the global adapter's validation accuracy (points) and the
    devices' mean training loss of the round, for every rounds variant: is it converging?"""
    curves: dict[str, list[dict[str, float]]] = {}
    names = [name for name, result in runs[0]["results"].items() if "rounds" in result]
    for name in names:
        per_seed = [run["results"][name]["rounds"] for run in runs]
        curves[name] = [
            {
                "validation": round(100 * statistics.fmean(s[r]["validation_accuracy"] for s in per_seed), 2),
                "mean_loss": round(statistics.fmean(s[r]["mean_loss"] for s in per_seed), 4),
            }
            for r in range(len(per_seed[0]))
        ]  # fmt: skip
    return curves


def federated_targets(accuracy: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """The issue's three targets judged on `accuracy` (per variant, mean over seeds); `--select` too."""
    fedavg = accuracy["fedavg"]["mean"]
    rows = [
        ("fedavg - independent_mean >= 5 points", fedavg - accuracy["independent_mean"]["mean"], 5.0, True),
        ("centralized - fedavg <= 3 points", accuracy["centralized"]["mean"] - fedavg, 3.0, False),
    ]
    if "aircomp_20db" in accuracy:
        rows.append(
            ("|fedavg - aircomp_20db| <= 1 point", abs(fedavg - accuracy["aircomp_20db"]["mean"]), 1.0, False)
        )
    return [
        {"target": name, "value": round(value, 2), "met": value >= bound if at_least else value <= bound}
        for name, value, bound, at_least in rows
    ]  # fmt: skip


def _bytes(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per round, all devices together, from the FedAvg runs (AirComp's adapters are the same size)."""
    rounds = [row for run in runs for row in run["results"]["fedavg"]["rounds"]]
    later = [row for row in rounds if row["round"] > 0]  # round 0 starts from the common initial adapter
    return {
        "adapter_bytes_up": round(statistics.fmean(r["adapter_bytes_up"] for r in rounds)),
        "adapter_bytes_down": round(statistics.fmean(r["adapter_bytes_down"] for r in later)) if later else 0,
        "wire_bytes_training": round(statistics.fmean(r["wire_bytes"] for r in rounds)),
    }


def _aircomp_errors(runs: list[dict[str, Any]], devices: int) -> dict[str, dict[str, Any]]:
    """Per AirComp variant, over every round of every seed: the mean relative error of the global
    adapter against FedAvg of all devices, split into what the devices left out (deep fade) and
    what the channel noise cost, and how many device-rounds were left out."""
    out: dict[str, dict[str, Any]] = {}
    for name in [n for n in runs[0]["results"] if n.startswith("aircomp_")]:
        rows = [row for run in runs for row in run["results"][name]["rounds"]]
        kept = [row for row in rows if row.get("relative_error") is not None]
        if not kept or "dropout_error" not in kept[0]:
            continue

        def mean(key: str, rows: list[dict[str, Any]] = kept) -> float:
            return round(statistics.fmean(row[key] for row in rows), 4)

        out[name] = {
            "relative_error": mean("relative_error"),
            "dropout_error": mean("dropout_error"),
            "noise_error": mean("noise_error"),
            "rounds": len(rows),
            "rounds_lost": len(rows) - len(kept),
            "device_rounds_left_out": sum(devices - row["participants"] for row in rows),
        }
    return out


def _trunk_adapter(accuracy: dict[str, dict[str, float]]) -> dict[str, Any]:
    """(e) of the issue: the FedAvg rows with the trunk adapter averaged and shared, side by side."""
    if "fedavg_shared" not in accuracy:
        return {"averaged": accuracy["fedavg"]["mean"], "shared": None}
    averaged, shared = accuracy["fedavg"]["mean"], accuracy["fedavg_shared"]["mean"]
    return {"averaged": averaged, "shared": shared, "shared_minus_averaged": round(shared - averaged, 2)}


def summarize(runs: list[dict[str, Any]], config: Any) -> dict[str, Any]:
    """The report's summary part: accuracy spread over seeds, targets, bytes, definitions."""
    accuracy = {name: _points(values) for name, values in _accuracies(runs).items()}
    validation = {name: _points(values) for name, values in _accuracies(runs, "validation").items()}
    return {
        "accuracy_points": accuracy,
        "validation_points": validation,
        "per_seed_points": {name: [round(100 * v, 2) for v in vs] for name, vs in _accuracies(runs).items()},
        "validation_curves": _curves(runs),
        "targets": federated_targets(accuracy),
        "bytes_per_round": {**_bytes(runs), "devices": config.devices},
        "trunk_adapter": _trunk_adapter(accuracy),
        "aircomp_errors": _aircomp_errors(runs, config.devices),
        "definitions": DEFINITIONS,
    }


def _optional_rows(run: dict[str, Any]) -> set[str]:
    """The rows of `run` a bench run may leave out: AirComp at each SNR, the shared trunk."""
    return {name for name in run["results"] if name.startswith("aircomp_") or name == "fedavg_shared"}


def _rows_of(run: dict[str, Any], carried: set[str]) -> dict[str, Any]:
    """`run` without its optional rows that are not in `carried`."""
    results = {k: v for k, v in run["results"].items() if k not in _optional_rows(run) - carried}
    kept = {**run, "results": results}
    if "order" in run:
        kept["order"] = [name for name in run["order"] if name in results]
    return kept


def merge_reports(report_jsons: list[str]) -> str:
    """One report from runs of the same config over disjoint seeds (`--first-seed`, e.g. one process
    per seed on a loaded machine): their seeds together, summarized again. Parts that ran different
    optional rows (`--snr-db`, `--no-shared-trunk`) merge into the rows they all carry. Each part
    keeps its own seconds and load average; the merged `seconds` is the longest part's."""
    reports = [json.loads(text) for text in report_jsons]
    rows = ("seeds", "first_seed", "snr_db", "shared_trunk")  # the seeds, and which optional rows ran
    keys = [
        {"lr_schedule": "constant", **{k: v for k, v in r["config"].items() if k not in rows}}
        for r in reports
    ]
    if any(key != keys[0] for key in keys):
        raise InvalidArgument("the reports to merge differ in their config (other than their seeds and rows)")
    everything = [run for r in reports for run in r["seeds"]]
    carried = set.intersection(*(_optional_rows(run) for run in everything))  # rows every part has
    runs = sorted((_rows_of(run, carried) for run in everything), key=lambda run: run["seed"])
    first = reports[0]["config"]
    if "snr_db" in first:
        keys[0]["snr_db"] = [s for s in first["snr_db"] if f"aircomp_{s:g}db" in carried]
    if "shared_trunk" in first:
        keys[0]["shared_trunk"] = "fedavg_shared" in carried
    seeds = [run["seed"] for run in runs]
    if len(set(seeds)) != len(seeds):
        raise InvalidArgument(f"the reports to merge share seeds: {seeds}")
    config = SimpleNamespace(**{**keys[0], "seeds": len(runs)})
    parts = [{"seeds": [run["seed"] for run in r["seeds"]], "seconds": r["seconds"],
              "load_average": r["load_average"]} for r in reports]  # fmt: skip
    merged = {
        **{k: v for k, v in reports[0].items() if k not in ("seeds", "seconds", "load_average")},
        "config": {**keys[0], "seeds": len(runs), "first_seed": min(seeds)},
        "parts": parts,
        "load_average": {
            "before": max((p["load_average"]["before"] for p in parts), key=lambda x: x[0]),
            "after": max((p["load_average"]["after"] for p in parts), key=lambda x: x[0]),
            "cpus": reports[0]["load_average"]["cpus"],
        },
        "seeds": runs,
        **summarize(runs, config),
        "seconds": max(p["seconds"] for p in parts),
    }
    return json.dumps(merged, indent=2)


def _server(config: dict[str, Any]) -> str:
    """The server's step of the federated rows, when not plain FedAvg (reports before it had none)."""
    momentum, server_lr = config.get("server_momentum", 0.0), config.get("server_lr", 1.0)
    lr = f", lr {config['lr']:g}" if "lr" in config else ""
    if config.get("lr_schedule", "constant") != "constant":
        lr += f" ({config['lr_schedule']} over each device's steps)"
    if momentum == 0 and server_lr == 1:
        return lr
    return (
        f"{lr}, server step FedAvgM (momentum {momentum:g}, server lr {server_lr:g}) in every federated row"
    )


def markdown_table(report_json: str) -> str:
    """The report as Markdown: accuracy per variant, targets, bytes per round."""
    report = json.loads(report_json)
    config, load = report["config"], report["load_average"]
    lines = [
        f"{config['devices']} devices, Dirichlet alpha {config['alpha']}, {config['rounds']} rounds x "
        f"{config['local_steps']} local steps ({report['steps_per_device']} steps per device), batch "
        f"{config['batch_size']}, max length {config['max_length']}{_server(config)}, "
        f"seeds {config['seeds']}; load average "
        f"{load['before']} before, {load['after']} after, {load['cpus']} CPUs; {report['seconds']} s",
        "",
        "| variant | test accuracy, mean over seeds | min | max | per seed | validation, mean |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in report["accuracy_points"].items():
        seeds = " / ".join(f"{v:.1f}" for v in report["per_seed_points"][name])
        valid = report["validation_points"].get(name)
        lines.append(
            f"| {name} | {row['mean']:.1f}% | {row['min']:.1f}% | {row['max']:.1f}% | {seeds} | "
            + (f"{valid['mean']:.1f}% |" if valid else "- |")
        )
    lines += _curve_table(report["validation_curves"])
    lines += ["", "| target | measured (points) | met |", "|---|---|---|"]
    for row in report["targets"]:
        name = row["target"].replace("|", "\\|")  # a literal | would end the Markdown cell
        lines.append(f"| {name} | {row['value']:.2f} | {'yes' if row['met'] else 'no'} |")
    trunk = report["trunk_adapter"]
    if trunk.get("shared") is not None:
        lines += [
            "",
            f"trunk_adapter averaged (fedavg) {trunk['averaged']:.1f}% vs shared (fedavg_shared) "
            f"{trunk['shared']:.1f}%: {trunk['shared_minus_averaged']:+.2f} points.",
        ]
    for name, row in report.get("aircomp_errors", {}).items():
        lines += [""]  # a line right under a table would read as one of its rows
        lines.append(
            f"{name}: global adapter's error against FedAvg per round, mean {row['relative_error']:.4f} "
            f"(devices left out alone {row['dropout_error']:.4f}, noise alone {row['noise_error']:.4f}); "
            f"{row['device_rounds_left_out']} device-rounds of {row['rounds'] * report['config']['devices']} "
            f"left out, {row['rounds_lost']} rounds lost."
        )
    data = report["bytes_per_round"]
    lines += [
        "",
        f"Bytes per round, all {data['devices']} devices together: adapters up {data['adapter_bytes_up']:,}, "
        f"global adapter down {data['adapter_bytes_down']:,}, split training on the wire "
        f"{data['wire_bytes_training']:,}.",
    ]
    return "\n".join(lines)


def _curve_table(curves: dict[str, list[dict[str, float]]]) -> list[str]:
    """Per round: the global adapter's validation accuracy and the devices' mean loss, per variant."""
    names = list(curves)
    lines = [
        "",
        "| round | " + " | ".join(f"{n} validation / loss" for n in names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for r in range(len(curves[names[0]]) if names else 0):
        cells = [f"{curves[n][r]['validation']:.1f}% / {curves[n][r]['mean_loss']:.3f}" for n in names]
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    return lines
