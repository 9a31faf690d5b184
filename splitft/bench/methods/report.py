"""The `bench methods` report as a Markdown table."""

from __future__ import annotations

import json
from typing import Any


def markdown_table(report_json: str | dict[str, Any]) -> str:
    """The report's figures as one Markdown table (for docs and the terminal)."""
    report = json.loads(report_json) if isinstance(report_json, str) else report_json
    head = (
        "| task | method | split | trainable device + trunk (budget) | metric before -> after "
        "| device peak MiB (train) | wire MB up / down | seconds |"
    )
    rows = [head, "|" + " --- |" * 8]
    for task, info in report["tasks"].items():
        metric = info["metric"]
        for method, r in info["methods"].items():
            t = r["trainable"]
            before, after = r["metric"]["before"], r["metric"]["after"]
            fmt = "{:.1%}" if metric == "heldout_accuracy" else "{:.3f}"
            wire = r["wire"]
            wire_text = (
                f"{wire['bytes_sent'] / 1e6:.1f} / {wire['bytes_received'] / 1e6:.1f}" if wire else "-"
            )
            budget = f"{t['method']:,} of {info['budget_parameters']:,}" if method != "head_only" else "head"
            rows.append(
                f"| {task} | {method} | {'yes' if r['split'] else 'no'} "
                f"| {t['device']:,} + {t['trunk']:,} ({budget}) "
                f"| {metric.replace('heldout_', '')} {fmt.format(before)} -> {fmt.format(after)} "
                f"| {r['memory']['train_peak_delta_mib']:.0f} | {wire_text} | {r['seconds']:.1f} |"
            )
    return "\n".join(rows)
