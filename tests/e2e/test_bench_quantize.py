"""`splitft bench quantize` runs end to end at a tiny size: every scheme's row, the targets, the table."""

from __future__ import annotations

import json

import pytest

from splitft.bench.quantize import QuantizeBenchConfig, markdown_table, run_quantize_bench
from splitft.errors import InvalidArgument


def test_the_config_refuses_what_cannot_run() -> None:
    with pytest.raises(InvalidArgument, match="unknown quantization 'int4'"):
        QuantizeBenchConfig(schemes=("int4",))
    with pytest.raises(InvalidArgument, match="rounds"):
        QuantizeBenchConfig(rounds=0)
    assert QuantizeBenchConfig(schemes=("int8",)).schemes == ("none", "int8")  # ratios are to fp32


@pytest.mark.slow
@pytest.mark.e2e
def test_bench_quantize_reports_every_scheme_side_by_side() -> None:
    config = QuantizeBenchConfig(
        layers=3, hidden=64, batch=2, tokens=16, rounds=2, steps_per_round=1, memory_steps=1,
        converge_steps=3, extra={"lm_pretrain_steps": 2, "max_per_class": 12},
    )  # fmt: skip
    report = json.loads(run_quantize_bench(config))
    labels = ["fp32", "int8", "nf4"]
    assert list(report["step_seconds"]) == labels and list(report["device_peak"]) == labels
    assert list(report["heldout"]["causal_lm"]) == [*labels, "fp32 (repeat)"]
    assert report["heldout"]["causal_lm"]["fp32 (repeat)"]["gap_percent"] == 0.0  # seeded: the noise floor
    weights = report["weights"]
    assert weights["nf4"]["trunk_bytes"] < weights["int8"]["trunk_bytes"] < weights["none"]["trunk_bytes"]
    assert weights["int8"]["device_bytes"] < weights["none"]["device_bytes"]
    assert {row["target"] for row in report["targets"]} == {
        "int8 trunk bytes / fp32", "int8 held-out loss gap % (causal_lm)", "int8 device peak / fp32",
    }  # fmt: skip
    table = markdown_table(report)
    assert table.count("\n") == 4 and "| nf4 |" in table
