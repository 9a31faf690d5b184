"""The demo's closing table (splitft/demo/summary.py): one row per job, from the summary it saves."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from splitft.demo.summary import print_summary, summary_rows

SUMMARY = {
    "job_id": "job-a-0123456789",
    "state": "succeeded",
    "job_seconds": 548.9,
    "devices": 2,
    "accuracy_before": 0.25,
    "per_device": {
        "d1": {"steps": 6, "last_loss": 0.5, "accuracy_after": 0.5, "bytes_sent": 100e6, "bytes_received": 9},
        "d2": {
            "steps": 9,
            "last_loss": 0.7,
            "accuracy_after": 0.75,
            "bytes_sent": 39.4e6,
            "bytes_received": 139e6,
        },
    },
    "federated": {
        "job_id": "job-b-0123456789",
        "state": "succeeded",
        "job_seconds": 20.0,
        "accuracy": 0.8,
        "rounds": [
            {"mean_loss": 0.9, "bytes_up": 4e6, "bytes_down": 0},
            {"mean_loss": 0.4, "bytes_up": 4e6, "bytes_down": 4e6},
        ],
    },
}


def test_one_row_per_job_with_its_outcome() -> None:
    independent, federated = summary_rows(SUMMARY)
    assert independent == [
        "independent",
        "succeeded",
        "549 s",
        "6-9 steps",
        "0.600",
        "139.4 / 139.0",
        "62.5%",
    ]
    assert federated == ["federated", "succeeded", "20 s", "2 rounds", "0.400", "8.0 / 4.0", "80.0%"]


def test_the_table_fits_an_80_column_terminal(tmp_path: Path) -> None:
    out = io.StringIO()
    print_summary(Console(file=out, width=80), SUMMARY, tmp_path)
    text = out.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80 and "…" not in text
    row = next(line for line in text.splitlines() if "federated" in line and "rounds" in line)
    assert row.split() == [
        "federated",
        "succeeded",
        "20",
        "s",
        "2",
        "rounds",
        "0.400",
        "8.0",
        "/",
        "4.0",
        "80.0%",
    ]
    assert "jobs: independent job-a-0123456789, federated job-b-0123456789." in " ".join(text.split())


def test_without_a_federated_job_the_table_has_one_row(tmp_path: Path) -> None:
    summary = {k: v for k, v in SUMMARY.items() if k != "federated"}
    assert len(summary_rows(summary)) == 1
    out = io.StringIO()
    print_summary(Console(file=out, width=300), summary, tmp_path)
    text = out.getvalue()
    assert "job-a" in text and "federated job" not in text
    assert str(tmp_path / "summary.json") in text
