"""`splitft bench offsite --quick` end to end on the causal LM (the classification task runs the
same code with the 22M-parameter MiniLM: minutes on a loaded machine, so it is left to the full
run; its offsite path is covered for BERT by tests/system/test_offsite*.py): a real edge process for
the split rows, the emulators built and distilled, every variant side by side, and a report whose
figures hang together."""

from __future__ import annotations

import json

import pytest

from splitft.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

VARIANTS = ["zero_shot", "offsite_drop", "offsite_distilled", "split_frozen", "split_trunk_lora"]


def test_bench_offsite_quick_reports_every_variant_side_by_side(tmp_path, capsys) -> None:
    out = tmp_path / "report.json"
    assert (
        main(["bench", "offsite", "--quick", "--tasks", "causal_lm", "--json", str(out), "--markdown"]) == 0
    )
    markdown = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["config"]["steps"] == 3 and report["config"]["seeds"] == 1
    assert report["config"]["threads"] == 1 and report["config"]["quick"] is True
    assert set(report["tasks"]) == {"causal_lm"}
    for task in report["tasks"].values():
        assert list(task["variants"]) == VARIANTS
        drop, distilled = task["emulator"]["drop"], task["emulator"]["distilled"]
        assert drop["kept_trunk_blocks"] == distilled["kept_trunk_blocks"]
        assert drop["size"]["emulator_parameters"] < drop["size"]["source_parameters"]
        assert drop["distillation"] == {} and distilled["distillation"]["steps"] == 3
        assert task["orders"] == [VARIANTS[1:]]
        variants = task["variants"]
        for variant in VARIANTS[1:]:
            assert variants[variant]["seeds"] == 1 and variants[variant]["heldout_loss"]["median"] > 0
        for variant in ("offsite_drop", "offsite_distilled"):
            assert variants[variant]["wire_bytes_per_step"]["median"] == 0  # no edge
            assert "emulator_heldout_loss" in variants[variant]
            # the device holds the whole emulator: more than a split device, less than the full model
            held = variants[variant]["device_weight_bytes"]["median"]
            assert (
                variants["split_frozen"]["device_weight_bytes"]["median"]
                < held
                < task["full_model_weight_bytes"]
            )
        for variant in ("split_frozen", "split_trunk_lora"):
            assert variants[variant]["wire_bytes_per_step"]["median"] > 0
        assert "| offsite_distilled |" in markdown
    assert "### causal_lm" in markdown
    assert "load average" in markdown
