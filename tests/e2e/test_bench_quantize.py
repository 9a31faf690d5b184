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
    with pytest.raises(InvalidArgument, match="BATCHxTOKENS with both >= 1, e.g. 1x32; got '0x4'"):
        QuantizeBenchConfig(memory_shapes=("0x4",))
    with pytest.raises(InvalidArgument, match="memory_modes must be some of rss, rss_fixed_threshold, alloc"):
        QuantizeBenchConfig(memory_modes=("vms",))
    assert QuantizeBenchConfig(schemes=("int8",)).schemes == ("none", "int8")  # ratios are to fp32
    assert QuantizeBenchConfig(batch=4, tokens=8).memory_shapes == ("4x8", "1x32")


@pytest.mark.slow
@pytest.mark.e2e
def test_bench_quantize_reports_every_variant_side_by_side() -> None:
    # The smallest run with every part: bf16 and int8 against fp32 (nf4's rows are the same code).
    config = QuantizeBenchConfig(
        schemes=("bf16", "int8"), layers=3, hidden=64, batch=2, tokens=16, rounds=1, steps_per_round=1,
        memory_steps=1, memory_rounds=1, memory_shapes=("2x16",), memory_modes=("alloc",),
        converge_steps=3, extra={"lm_pretrain_steps": 2, "max_per_class": 12},
    )  # fmt: skip
    report = json.loads(run_quantize_bench(config))
    labels = ["fp32", "bf16", "int8"]
    assert list(report["step_seconds"]) == labels
    assert list(report["device_peak"]["2x16"]["alloc"]) == labels
    assert list(report["heldout"]["causal_lm"]) == [*labels, "fp32 (repeat)"]
    assert report["heldout"]["causal_lm"]["fp32 (repeat)"]["gap_percent"] == 0.0  # seeded: the noise floor
    weights = report["weights"]
    assert weights["int8"]["trunk_bytes"] < weights["bf16"]["trunk_bytes"] < weights["none"]["trunk_bytes"]
    assert weights["bf16"]["device_bytes"] < weights["none"]["device_bytes"]
    assert {row["target"] for row in report["targets"]} == {
        "int8 trunk bytes / fp32", "int8 held-out loss gap % (causal_lm)",
        "bf16 held-out loss gap % (causal_lm)", "int8 device peak / fp32 (2x16, alloc)",
    }  # fmt: skip
    main, peaks = markdown_table(report).split("\n\n")
    assert main.count("\n") == 4 and "| bf16 |" in main
    assert peaks.count("\n") == 4 and "device peak MiB 2x16 alloc" in peaks
