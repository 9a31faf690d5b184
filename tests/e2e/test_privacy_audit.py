"""`splitft privacy audit --quick` end to end on the packaged all-MiniLM-L6-v2: a real edge on loopback,
a real split training, the wire tapped; the report's numbers are fractions, the undefended split
leaks tokens, and a bad defense is a usage error naming the field."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def _audit(*args: str, tmp_path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "splitft.cli", "privacy", "audit", "--quick", *args],
        capture_output=True,
        text=True,
        timeout=500,
        cwd=tmp_path,
    )


@pytest.mark.slow
def test_quick_audit_reports_token_recovery_and_label_inference(tmp_path) -> None:
    done = _audit("--json", "report.json", tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "what the edge recovers" in done.stdout
    (report,) = json.loads((tmp_path / "report.json").read_text())
    assert set(report["tokens"]) == {
        "linear@first_epoch",
        "linear@last_epoch",
        "mlp@first_epoch",
        "mlp@last_epoch",
        "linear_aligned@first_epoch",
        "linear_aligned@last_epoch",
        "trunk_linear@first_epoch",
        "trunk_linear@last_epoch",
        "trunk_linear_aligned@first_epoch",
        "trunk_linear_aligned@last_epoch",
    }
    for row in report["tokens"].values():
        assert 0 <= row["top1"] <= row["top5"] <= 1
    # Undefended, a linear decoder trained on a few hundred public docstrings already reads most tokens,
    # from h_k and from the trunk's output alike.
    assert report["tokens"]["linear@first_epoch"]["top1"] > 0.5
    assert report["tokens"]["trunk_linear@first_epoch"]["top1"] > 0.5
    assert report["token_recovery"] == max(row["top1"] for row in report["tokens"].values())
    assert 0 <= report["output_label_oracle"] <= 1
    for signal in ("output", "input"):  # the trunk output the edge computed, the h_k it received
        rows = [row for key, row in report["labels"].items() if key.startswith(f"{signal}@")]
        assert rows and all(0 <= row["oracle"] <= 1 and 0 <= row["oracle_pooled"] <= 1 for row in rows)
    assert 0 <= report["input_label_inference"] <= 1 and 0 <= report["input_label_oracle"] <= 1
    assert 0 < report["label_chance"] < 1 and 0 <= report["gradient_label_inference"] <= 1
    assert 0 <= report["accuracy"] <= 1 and report["scored_tokens"] > 100


@pytest.mark.slow
def test_withheld_gradients_leave_the_gradient_attack_nothing(tmp_path) -> None:
    done = _audit("--withhold-gradients", "--head-skip", "--json", "report.json", tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "what the edge recovers" in done.stdout
    (report,) = json.loads((tmp_path / "report.json").read_text())
    signals = {key.split("@")[0] for key in report["labels"]}
    assert signals == {"output", "input"}  # no gradient row: none was sent
    assert report["privacy"]["withhold_gradients"] is True and report["privacy"]["head_skip"] is True


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (["--activation-noise", "1.0"], "privacy.activation_noise needs privacy.activation_clip"),
        (["--withhold-gradients", "--gradient-clip", "1"], "privacy.withhold_gradients sends no gradient"),
        (["--cca-weight", "1", "--warmup-task", "1"], "privacy.warmup_task needs privacy.private_warmup > 0"),
    ],
)
def test_a_bad_defense_is_a_usage_error_naming_the_field(options: list[str], named: str, tmp_path) -> None:
    done = _audit(*options, tmp_path=tmp_path)
    assert done.returncode == 2
    assert named in " ".join(done.stderr.split())  # unwrapped
