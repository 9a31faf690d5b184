"""`splitft bench resume` runs end to end at a tiny size: every setting's row, the size, the kill."""

from __future__ import annotations

import json

import pytest

from splitft.bench.resume import ResumeBenchConfig, markdown_table, run_resume_bench
from splitft.errors import InvalidArgument


def test_the_config_refuses_what_cannot_run() -> None:
    with pytest.raises(InvalidArgument, match="checkpoint interval"):
        ResumeBenchConfig(every=(0,))
    with pytest.raises(InvalidArgument, match="multiple of rounds"):
        ResumeBenchConfig(steps=10, rounds=3)
    with pytest.raises(InvalidArgument, match="kill_repeats"):
        ResumeBenchConfig(kill_repeats=0)


@pytest.mark.slow
@pytest.mark.e2e
def test_bench_resume_reports_every_setting_side_by_side() -> None:
    config = ResumeBenchConfig(
        layers=3, hidden=32, batch=2, tokens=8, every=(1, 2), steps=4, rounds=2,
        checkpoint_repeats=2, kill_repeats=1,
    )  # fmt: skip
    report = json.loads(run_resume_bench(config))
    rows = report["step_seconds"]
    assert list(rows) == ["none", "every 1", "every 2"]
    assert [rows[k]["checkpoints_timed"] for k in rows] == [0, 4, 2]
    assert rows["none"]["mean_vs_none"] == 1.0
    checkpoint = report["checkpoint"]
    assert set(checkpoint["files"]) == {
        "manifest.json", "meta.json", "device.safetensors", "trunk.state", "trunk.safetensors",
    }  # fmt: skip
    assert checkpoint["bytes"] == sum(checkpoint["files"].values()) > 0
    kill = report["kill_to_first_resumed_step"]
    assert set(kill) == {"detect_seconds", "from_checkpoint_seconds", "first_step_seconds", "total_seconds"}
    assert kill["total_seconds"]["median"] >= kill["from_checkpoint_seconds"]["median"] > 0
    table = markdown_table(report)
    assert "| every 2 |" in table and "kill to first resumed step" in table
