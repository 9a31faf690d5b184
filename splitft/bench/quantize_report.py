"""`splitft bench quantize`'s targets and its Markdown tables (docs/benchmarks.md)."""

from __future__ import annotations

from typing import Any

from splitft.bench.quantize_variants import LABELS

TRUNK_BYTES_TARGET = {"int8": 0.3}  # x fp32's trunk weight bytes
LOSS_GAP_TARGET = {"int8": 2.0, "bf16": 1.0}  # percent over fp32's held-out loss
DEVICE_PEAK_TARGET = {"int8": 0.6}  # x fp32's device peak memory
MIB = 1024 * 1024


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of the issue with the measured value and whether it is met (the device peak at
    every shape and measure: the issue names neither)."""
    weights, fp32 = report["weights"], report["weights"]["none"]
    rows = []
    for scheme, most in TRUNK_BYTES_TARGET.items():
        if scheme in weights:
            ratio = round(weights[scheme]["trunk_bytes"] / fp32["trunk_bytes"], 3)
            rows.append({"target": f"{scheme} trunk bytes / fp32", "at_most": most, "value": ratio})
    for task, runs in report["heldout"].items():
        for scheme, most in LOSS_GAP_TARGET.items():
            if LABELS[scheme] in runs:
                gap = runs[LABELS[scheme]]["gap_percent"]
                name = f"{LABELS[scheme]} held-out loss gap % ({task})"
                rows.append({"target": name, "at_most": most, "value": gap})
    for shape, modes in report["device_peak"].items():
        for mode, peaks in modes.items():
            for scheme, most in DEVICE_PEAK_TARGET.items():
                if LABELS[scheme] in peaks:
                    ratio = peaks[LABELS[scheme]]["vs_fp32"]
                    name = f"{scheme} device peak / fp32 ({shape}, {mode})"
                    rows.append({"target": name, "at_most": most, "value": ratio})
    return [{**row, "met": row["value"] <= row["at_most"]} for row in rows]


def markdown_table(report: dict[str, Any]) -> str:
    """Two Markdown tables: bytes, step time and losses per variant; then the device peaks."""
    return _main_table(report) + "\n\n" + _peak_table(report)


def _main_table(report: dict[str, Any]) -> str:
    fp32 = report["weights"]["none"]
    lines = [
        "| weights | trunk MiB (x fp32) | device MiB (x fp32) | step s [range] (x fp32) | "
        + " | ".join(f"held-out loss {t} (gap %)" for t in report["heldout"])
        + " |",
        "|---" * (4 + len(report["heldout"])) + "|",
    ]
    for scheme, label in LABELS.items():
        if scheme not in report["weights"]:
            continue
        w, step = report["weights"][scheme], report["step_seconds"][label]
        cells = [
            label,
            f"{w['trunk_bytes'] / MIB:.2f} ({w['trunk_bytes'] / fp32['trunk_bytes']:.3f})",
            f"{w['device_bytes'] / MIB:.2f} ({w['device_bytes'] / fp32['device_bytes']:.3f})",
            _spread_cell(step, 3),
            *(_loss_cell(runs[label]) for runs in report["heldout"].values()),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _peak_table(report: dict[str, Any]) -> str:
    columns = [(shape, mode) for shape, modes in report["device_peak"].items() for mode in modes]
    lines = [
        "| weights | " + " | ".join(f"device peak MiB {s} {m} (x fp32)" for s, m in columns) + " |",
        "|---" * (1 + len(columns)) + "|",
    ]
    for scheme, label in LABELS.items():
        if scheme in report["weights"]:
            cells = [_spread_cell(report["device_peak"][shape][mode][label], 1) for shape, mode in columns]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _spread_cell(row: dict[str, Any], digits: int) -> str:
    median, low, high = (f"{row[k]:.{digits}f}" for k in ("median", "min", "max"))
    return f"{median} [{low}-{high}] ({row['vs_fp32']:.2f})"


def _loss_cell(run: dict[str, Any]) -> str:
    return f"{run['heldout_loss']:.4f} ({run['gap_percent']:+.2f})"
