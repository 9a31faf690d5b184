"""The demo's closing table (splitft/demo/summary.py): one row per job, from the summary it saves."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from splitft.demo.summary import print_summary, summary_rows

SUMMARY = {
    "job_id": "job-a",
    "state": "succeeded",
    "job_seconds": 12.5,
    "devices": 2,
    "accuracy_before": 0.25,
    "per_device": {
        "d1": {"steps": 6, "last_loss": 0.5, "accuracy_after": 0.5, "bytes_sent": 1000, "bytes_received": 9},
        "d2": {"steps": 6, "last_loss": 0.7, "accuracy_after": 0.75, "bytes_sent": 500, "bytes_received": 4},
    },
    "federated": {
        "job_id": "job-b",
        "state": "succeeded",
        "job_seconds": 20.0,
        "accuracy": 0.8,
        "rounds": [
            {"mean_loss": 0.9, "bytes_up": 100, "bytes_down": 0},
            {"mean_loss": 0.4, "bytes_up": 100, "bytes_down": 200},
        ],
    },
}


def test_one_row_per_job_with_its_outcome() -> None:
    independent, federated = summary_rows(SUMMARY)
    assert independent == [
        "independent",
        "job-a",
        "succeeded",
        "12.5",
        "2",
        "6 per device",
        "0.600 (mean of devices)",
        "1,500 / 13 (data plane)",
        "62.5% (mean of own adapters)",
    ]
    assert federated[:3] == ["federated", "job-b", "succeeded"]
    assert federated[5:] == [
        "2 rounds",
        "0.400 (last round's mean)",
        "200 / 200 (adapters)",
        "80.0% (global adapter)",
    ]


def test_without_a_federated_job_the_table_has_one_row(tmp_path: Path) -> None:
    summary = {k: v for k, v in SUMMARY.items() if k != "federated"}
    assert len(summary_rows(summary)) == 1
    out = io.StringIO()
    print_summary(Console(file=out, width=300), summary, tmp_path)
    text = out.getvalue()
    assert "job-a" in text and "federated" not in text.split("summary")[1].split("before training")[0]
    assert str(tmp_path / "summary.json") in text
