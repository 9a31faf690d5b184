"""`splitft plan run` for real: an edge process, a worker process per candidate, on a tiny BERT with
a tokenizer, within small bounds; its table, plan.json and front.png, and what it refuses."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from splitft.data.stdlib_task import build_stdlib_task
from splitft.local.loop import write_jsonl
from splitft.plan.choice import PlanFile
from tests.support.agent_support import make_bert_with_tokenizer

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
BUDGET_S = 300


@pytest.fixture(scope="module")
def bert(tiny_models, tmp_path_factory) -> Path:
    return make_bert_with_tokenizer(tiny_models, tmp_path_factory)  # 4 blocks


def plan_cli(*args: str, timeout: float = BUDGET_S + 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "splitft.cli", "plan", "run", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_plan_run_measures_within_its_bounds_and_writes_table_json_and_plot(
    bert: Path, tmp_path: Path
) -> None:
    data = write_jsonl(build_stdlib_task(max_per_class=10).train, tmp_path / "data.jsonl")
    out = tmp_path / "plan"
    started = time.monotonic()
    # Splits 1:0 and 2:1 run on 4 blocks; 3:1 leaves no trunk block (refused). 3 splits x 2 gradient
    # codecs x 2 precisions = 12 candidates, at most 2 measured.
    done = plan_cli(
        *("--model-dir", str(bert), "--model", "bert", "--data", str(data), "--out", str(out)),
        *("--device-memory", "4GB", "--uplink-mbps", "10", "--downlink-mbps", "50", "--speed-factor", "0.5"),
        *("--splits", "1:0,3:1,2:1", "--ranks", "4", "--activations-codecs", "raw"),
        *("--gradients-codecs", "raw,int8", "--precisions", "fp32,int8"),
        *("--max-candidates", "2", "--budget-s", str(BUDGET_S), "--train-steps", "3"),
        *("--batch-size", "4", "--max-length", "16", "--eval-examples", "8"),
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-3000:]
    assert elapsed < BUDGET_S + 60
    plan = PlanFile.model_validate_json((out / "plan.json").read_text())
    status = [r.status for r in plan.candidates]
    assert len(plan.candidates) == 12 and status[0] == "measured"  # the reference runs first
    assert status.count("measured") + status.count("failed") == 2
    refused = [r for r in plan.candidates if r.status == "refused"]
    assert len(refused) == 4 and all("no trunk block" in r.reason for r in refused)
    assert all(r.candidate.device_layers == 3 for r in refused)
    skipped = [r.reason for r in plan.candidates if r.status == "skipped"]
    assert set(skipped) == {"--max-candidates reached"} and len(skipped) == 6
    for result in plan.candidates:
        if result.measured is not None:
            m = result.measured
            assert m.device_peak_bytes > 0 and m.bytes_up > 0 and m.bytes_down > 0
            assert m.device_compute_s > 0 and m.held_out_loss > 0 and m.train_steps == 3
    assert plan.front and plan.recommended in plan.front  # 4 GB: every measured candidate fits
    assert all(p.fits for p in plan.projected) and "within 5%" in plan.rule
    assert plan.device_class is not None and plan.device_class.speed_factor == 0.5
    assert (out / "front.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = " ".join(done.stdout.split())
    assert f"recommended: {plan.recommended}" in table and "refused" in table
    assert "6 more candidates not measured: --max-candidates reached" in table
    assert "plan:1/12k1j0-r4-raw/raw-fp32:measuring" in "".join(done.stderr.split())  # progress


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--splits", "1-0"], "expected K:J"),
        (["--ranks", "four"], "invalid literal"),
        (["--precisions", "fp8"], "unknown ['fp8']"),
        (["--uplink-mbps", "-1"], "expected a finite number > 0"),
        (["--gradients-codecs", "zip"], "unknown codec"),
        (["--activations-codecs", "topk:0.1"], "gradients only"),
    ],
)
def test_plan_run_refuses_bad_arguments_with_exit_2(bert: Path, tmp_path: Path, args, message) -> None:
    base = ["--model-dir", str(bert), "--out", str(tmp_path), "--device-memory", "1GB"]
    base += ["--uplink-mbps", "1", "--downlink-mbps", "1"]
    done = plan_cli(*base, *args, timeout=120)
    assert done.returncode == 2
    assert message in " ".join(done.stderr.split())
    assert not (tmp_path / "plan.json").exists()
