"""`splitft bench sparse` on a small trunk: the dense formulation keeps exactly one copy of every
target weight per forward more than the sparse one, and bad options are refused."""

from __future__ import annotations

import json

import pytest

from splitft.bench.sparse import SparseBenchConfig, run_sparse_bench
from splitft.errors import InvalidArgument


def test_dense_keeps_a_copy_of_every_target_weight_per_forward_and_sparse_does_not() -> None:
    config = SparseBenchConfig(layers=1, hidden=32, batch=2, tokens=8, rounds=2, steps=1)
    report = json.loads(run_sparse_bench(config))
    assert report["config"]["rounds"] == 2 and report["trunk"]["k_per_row"] == [1]
    dense, sparse = (report["implementations"][n] for n in ("dense", "sparse"))
    saved = {n: r["saved_bytes_per_forward"]["median"] for n, r in (("dense", dense), ("sparse", sparse))}
    assert saved["dense"] - saved["sparse"] == report["trunk"]["target_weight_bytes"]
    assert sparse["step_peak_bytes"]["max"] < dense["step_peak_bytes"]["min"]
    assert len(sparse["rounds"]["step_ms"]) == len(dense["rounds"]["step_ms"]) == 2
    assert set(report["load_average"]) == {"before", "after"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rounds": 0}, "must be >= 1"),
        ({"hidden": 40}, "multiple of 16"),
        ({"tokens": 1}, "tokens must be >= 2"),
        ({"budget_fraction": 0.0}, r"budget_fraction must be in \(0, 1\]"),
    ],
)
def test_bad_options_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        SparseBenchConfig(**kwargs)


def test_the_cli_refuses_bad_options_with_exit_2(capfd: pytest.CaptureFixture[str]) -> None:
    from splitft.cli import main

    assert main(["bench", "sparse", "--rounds", "0"]) == 2
    assert "threads must be >= 1" in " ".join(capfd.readouterr().err.split())
    with pytest.raises(SystemExit) as exit_info:  # argparse: not a number
        main(["bench", "sparse", "--budget-fraction", "a lot"])
    assert exit_info.value.code == 2
