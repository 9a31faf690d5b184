"""`bench federated`'s report: accuracy per variant over seeds, the issue's targets (met or not),
bytes per round, and the Markdown tables `--markdown` prints."""

from __future__ import annotations

import json
import statistics
from typing import Any

DEFINITIONS = {
    "steps": "every device takes rounds * local_steps optimizer steps in every variant",
    "independent": "each device's own adapter after all its steps on its own shard",
    "fedavg": "the global adapter after the last round (whole adapter: device and trunk parts)",
    "aircomp": "the same rounds aggregated by simulated AirComp (Rayleigh fading, truncation 0.1)",
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


def _accuracies(runs: list[dict[str, Any]]) -> dict[str, list[float]]:
    rows: dict[str, list[float]] = {}
    for run in runs:
        for name, result in run["results"].items():
            if name == "independent":
                rows.setdefault("independent_mean", []).append(result["mean"])
                rows.setdefault("independent_worst", []).append(result["worst"])
            elif name == "centralized":
                rows.setdefault("centralized", []).append(result["accuracy"])
                rows.setdefault("centralized_one_device_steps", []).append(
                    result["accuracy_one_device_steps"]
                )
            else:
                rows.setdefault(name, []).append(result["accuracy"])
    rows["initial"] = [run["initial_accuracy"] for run in runs]
    return rows


def _targets(accuracy: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
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


def _trunk_adapter(accuracy: dict[str, dict[str, float]]) -> dict[str, Any]:
    """(e) of the issue: the FedAvg rows with the trunk adapter averaged and shared, side by side."""
    if "fedavg_shared" not in accuracy:
        return {"averaged": accuracy["fedavg"]["mean"], "shared": None}
    averaged, shared = accuracy["fedavg"]["mean"], accuracy["fedavg_shared"]["mean"]
    return {"averaged": averaged, "shared": shared, "shared_minus_averaged": round(shared - averaged, 2)}


def summarize(runs: list[dict[str, Any]], config: Any) -> dict[str, Any]:
    """The report's summary part: accuracy spread over seeds, targets, bytes, definitions."""
    accuracy = {name: _points(values) for name, values in _accuracies(runs).items()}
    return {
        "accuracy_points": accuracy,
        "targets": _targets(accuracy),
        "bytes_per_round": {**_bytes(runs), "devices": config.devices},
        "trunk_adapter": _trunk_adapter(accuracy),
        "definitions": DEFINITIONS,
    }


def markdown_table(report_json: str) -> str:
    """The report as Markdown: accuracy per variant, targets, bytes per round."""
    report = json.loads(report_json)
    config, load = report["config"], report["load_average"]
    lines = [
        f"{config['devices']} devices, Dirichlet alpha {config['alpha']}, {config['rounds']} rounds x "
        f"{config['local_steps']} local steps ({report['steps_per_device']} steps per device), batch "
        f"{config['batch_size']}, max length {config['max_length']}, seeds {config['seeds']}; load average "
        f"{load['before']} before, {load['after']} after, {load['cpus']} CPUs; {report['seconds']} s",
        "",
        "| variant | held-out accuracy, mean over seeds | min | max |",
        "|---|---|---|---|",
    ]
    for name, row in report["accuracy_points"].items():
        lines.append(f"| {name} | {row['mean']:.1f}% | {row['min']:.1f}% | {row['max']:.1f}% |")
    lines += ["", "| target | measured (points) | met |", "|---|---|---|"]
    for row in report["targets"]:
        lines.append(f"| {row['target']} | {row['value']:.2f} | {'yes' if row['met'] else 'no'} |")
    trunk = report["trunk_adapter"]
    if trunk.get("shared") is not None:
        lines += [
            "",
            f"trunk_adapter averaged (fedavg) {trunk['averaged']:.1f}% vs shared (fedavg_shared) "
            f"{trunk['shared']:.1f}%: {trunk['shared_minus_averaged']:+.2f} points.",
        ]
    data = report["bytes_per_round"]
    lines += [
        "",
        f"Bytes per round, all {data['devices']} devices together: adapters up {data['adapter_bytes_up']:,}, "
        f"global adapter down {data['adapter_bytes_down']:,}, split training on the wire "
        f"{data['wire_bytes_training']:,}.",
    ]
    return "\n".join(lines)
