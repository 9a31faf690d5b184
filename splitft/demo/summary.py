"""The demo's last word: one table of what ran (each job, its outcome, time, loss, bytes, accuracy)
and where to look next. Narrow enough for an 80-column terminal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

NOTES = (
    "loss: mean of the devices' last reports (independent), the last round's mean (federated); "
    "MB: data plane, device side (independent), adapters (federated); accuracy: mean of the devices' "
    "own adapters (independent), the global adapter (federated)"
)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else f"{value:{spec}}"


def _mb(up: float, down: float) -> str:
    return f"{up / 1e6:.1f} / {down / 1e6:.1f}"


def summary_rows(summary: dict[str, Any]) -> list[list[str]]:
    """One row per job: kind, state, seconds, training, last loss, bytes up / down, accuracy."""
    per_device = summary["per_device"].values()
    losses = [row["last_loss"] for row in per_device if row["last_loss"] is not None]
    steps = sorted(int(row["steps"]) for row in per_device if row["steps"] is not None)
    training = "-" if not steps else f"{steps[0]}" if steps[0] == steps[-1] else f"{steps[0]}-{steps[-1]}"
    rows = [
        [
            "independent",
            summary["state"],
            f"{summary['job_seconds']:.0f} s",
            f"{training} steps",
            _fmt(_mean(losses), ".3f"),
            _mb(
                sum(r["bytes_sent"] or 0 for r in per_device),
                sum(r["bytes_received"] or 0 for r in per_device),
            ),
            _fmt(_mean([row["accuracy_after"] for row in per_device]), ".1%"),
        ]
    ]
    fed = summary.get("federated")
    if fed is not None:
        rounds = fed["rounds"]
        last_loss = next((r["mean_loss"] for r in reversed(rounds) if r["mean_loss"] is not None), None)
        rows.append(
            [
                "federated",
                fed["state"],
                f"{fed['job_seconds']:.0f} s",
                f"{len(rounds)} rounds",
                _fmt(last_loss, ".3f"),
                _mb(sum(r["bytes_up"] for r in rounds), sum(r["bytes_down"] for r in rounds)),
                _fmt(fed["accuracy"], ".1%"),
            ]
        )
    return rows


def print_summary(console: Console, summary: dict[str, Any], out: Path) -> None:
    """The closing table and where the demo left its files."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1, 0, 0))
    for name in ("job", "state", "time", "training", "loss", "MB up/down", "accuracy"):
        table.add_column(name, no_wrap=True)
    table.title = f"summary (held-out accuracy before training: {summary['accuracy_before']:.1%})"
    for row in summary_rows(summary):
        table.add_row(*row)
    console.print(table)
    ids = [f"independent {summary['job_id']}"]
    if summary.get("federated") is not None:
        ids.append(f"federated {summary['federated']['job_id']}")
    console.print(f"jobs: {', '.join(ids)}. {NOTES}")
    console.print(
        f"Files: {out / 'summary.json'}, adapters in {out / 'adapters'}, logs in {out / 'loop'}. "
        "A running control plane shows its jobs at /ui and with `splitft jobs` (docs/operators.md)."
    )
