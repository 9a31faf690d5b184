"""The demo's last word: one table of what ran (each job, its outcome, time, loss, bytes, accuracy)
and where to look next."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summary_rows(summary: dict[str, Any]) -> list[list[str]]:
    """One row per job: kind, id, state, seconds, devices, steps, last loss, bytes, held-out accuracy."""
    per_device = summary["per_device"]
    losses = [row["last_loss"] for row in per_device.values() if row["last_loss"] is not None]
    own = [row["accuracy_after"] for row in per_device.values()]
    steps = sorted({str(row["steps"]) for row in per_device.values()})
    rows = [
        [
            "independent",
            summary["job_id"],
            summary["state"],
            f"{summary['job_seconds']}",
            str(summary["devices"]),
            "/".join(steps) + " per device",
            _fmt(_mean(losses), ".3f", " (mean of devices)"),
            f"{sum(r['bytes_sent'] or 0 for r in per_device.values()):,} / "
            f"{sum(r['bytes_received'] or 0 for r in per_device.values()):,} (data plane)",
            _fmt(_mean(own), ".1%", " (mean of own adapters)"),
        ]
    ]
    fed = summary.get("federated")
    if fed is not None:
        rounds = fed["rounds"]
        last_loss = next((r["mean_loss"] for r in reversed(rounds) if r["mean_loss"] is not None), None)
        rows.append(
            [
                "federated",
                fed["job_id"],
                fed["state"],
                f"{fed['job_seconds']}",
                str(summary["devices"]),
                f"{len(rounds)} rounds",
                _fmt(last_loss, ".3f", " (last round's mean)"),
                f"{sum(r['bytes_up'] for r in rounds):,} / "
                f"{sum(r['bytes_down'] for r in rounds):,} (adapters)",
                _fmt(fed["accuracy"], ".1%", " (global adapter)"),
            ]
        )
    return rows


def _fmt(value: float | None, spec: str, note: str) -> str:
    return "-" if value is None else f"{value:{spec}}{note}"


def print_summary(console: Console, summary: dict[str, Any], out: Path) -> None:
    """The closing table and where the demo left its files."""
    table = Table(
        "job",
        "id",
        "state",
        "seconds",
        "devices",
        "training",
        "last loss",
        "bytes up / down",
        "held-out accuracy",
        title="summary",
    )
    for row in summary_rows(summary):
        table.add_row(*row)
    console.print(table)
    console.print(
        f"before training: {summary['accuracy_before']:.1%}. Files: {out / 'summary.json'}, adapters in "
        f"{out / 'adapters'}, logs in {out / 'loop'}; `splitft jobs show ID` or the dashboard (/ui) "
        "show a running control plane's jobs (docs/operators.md)"
    )
