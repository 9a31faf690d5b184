"""docs/privacy.md's seventh-pass table is what `docs/scripts/privacy_table.py` prints from the audit
reports committed beside it: the page's figures are the reports', row for row."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "docs" / "scripts" / "privacy_table.py"
REPORTS = ROOT / "docs" / "results" / "privacy-stop32"


def _table(folder: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    argv = sys.argv
    sys.argv = [str(SCRIPT), str(folder), *args]
    try:
        with pytest.raises(SystemExit) as done:
            runpy.run_path(str(SCRIPT), run_name="__main__")
    finally:
        sys.argv = argv
    captured = capsys.readouterr()
    return int(done.value.code or 0), captured.out, captured.err


def test_the_page_carries_the_reports_rows(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _table(REPORTS, capsys)
    assert code == 0
    page = (ROOT / "docs" / "privacy.md").read_text()
    lines = [line for line in out.splitlines() if line.startswith(("| ", "- "))]
    assert len(lines) > 40
    missing = [line for line in lines if line not in page]
    assert not missing, missing[:3]


def _report(accuracy: float, withheld: bool) -> list[dict]:
    tokens = {
        f"{d}@{p}": {"top1": 0.3, "top5": 0.5}
        for d in ("linear", "trunk_linear")
        for p in ("first_epoch", "last_epoch")
    }
    return [{
        "accuracy": accuracy, "tokens": tokens, "privacy": {"withhold_gradients": withheld},
        "gradient_label_inference": 0.9, "output_label_inference": 0.4, "output_label_oracle": 0.8,
        "input_label_inference": 0.27, "input_label_oracle": 0.85, "label_chance": 0.25,
    }]  # fmt: skip


def test_points_lost_are_against_the_reference_of_the_same_seed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "undefended-j1-seed0.json").write_text(json.dumps(_report(0.9, False)))
    (tmp_path / "defended-seed0.json").write_text(json.dumps(_report(0.87, True)))
    (tmp_path / "notes.txt").write_text("not a report")
    code, out, _ = _table(tmp_path, capsys)
    assert code == 0
    assert "| defended | 0 | 87.0% (+3.0) | 30.0% / 30.0% | 30.0% | none sent | 40.0% / 80.0% |" in out
    assert "| undefended-j1 | 0 | 90.0% | 30.0% / 30.0% | 30.0% | 90.0% |" in out
    assert "- defended (1 seeds): accuracy 87.0% to 87.0%, mean lost +3.0, worst +3.0" in out


def test_an_empty_folder_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _table(tmp_path, capsys)
    assert code == 2 and out == ""
    assert f"no CONFIG-seedS.json reports in {tmp_path}" in err
