"""`splitft bench methods` end to end on a tiny causal LM: every method trains, at comparable budgets."""

from __future__ import annotations

import json

import pytest

from splitft.bench.methods import (
    BUDGET_MATCHED,
    METHODS,
    SPLIT_METHODS,
    MethodsBenchConfig,
    markdown_table,
    run_methods_bench,
)
from splitft.errors import InvalidArgument

SMOKE = MethodsBenchConfig(
    tasks=("causal_lm",),
    max_per_class=12,
    calibration_batches=1,
    max_steps=6,
    lm_hidden=32,
    lm_pretrain_steps=5,
    lm_epochs=2,
    lm_batch_size=8,
    lm_max_length=48,
)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_methods_bench_smoke_every_method_trains_at_comparable_budgets():
    report = json.loads(run_methods_bench(SMOKE))
    assert report["benchmark"] == "methods"
    assert report["config"]["tasks"] == ["causal_lm"]
    assert report["lm_pretraining"]["steps"] == 5
    task = report["tasks"]["causal_lm"]
    assert task["metric"] == "heldout_loss"
    assert task["budget_parameters"] > 0 and task["lora"]["rank"] >= 1
    assert set(task["methods"]) == set(METHODS)

    for method, result in task["methods"].items():
        assert result["method"] == method and result["task"] == "causal_lm"
        assert result["split"] is (method in SPLIT_METHODS)
        assert result["steps"] == SMOKE.max_steps
        metric = result["metric"]
        assert metric["name"] == "heldout_loss"
        assert metric["after"] < metric["before"], f"{method} did not learn: {metric}"
        trainable = result["trainable"]
        assert trainable["method"] > 0 and trainable["total"] == trainable["device"] + trainable["trunk"]
        if method in SPLIT_METHODS:
            # LoRA and TaskEdge train both sides; TinyTrain's greedy choice may leave a side out.
            assert trainable["device"] > 0
            if method != "tinytrain":
                assert trainable["trunk"] > 0
            else:
                assert trainable["trunk"] == result["selection"]["entries_in_trunk"]
            wire = result["wire"]
            assert wire["bytes_sent"] > 0 and wire["bytes_received"] > 0 and wire["train_bytes_per_step"] > 0
        else:
            assert trainable["trunk"] == 0 and result["wire"] is None
        memory = result["memory"]
        assert memory["peak_was_reset"] and memory["train_peak_delta_mib"] >= 0
        assert memory["peak_delta_mib"] >= memory["train_peak_delta_mib"]
        assert result["seconds"] > 0 and result["process_seconds"] >= result["seconds"]

    # Every method starts from the same model: the same held-out loss before training.
    befores = [r["metric"]["before"] for r in task["methods"].values()]
    assert max(befores) - min(befores) < 1e-4

    # LoRA, TaskEdge and TinyTrain are sized to one budget: within 2x of it and of each other.
    sizes = [task["methods"][m]["trainable"]["method"] for m in BUDGET_MATCHED]
    budget = task["budget_parameters"]
    assert max(sizes) <= 2 * min(sizes), sizes
    assert all(budget / 2 <= s <= 2 * budget for s in sizes), (sizes, budget)
    assert task["methods"]["tinytrain"]["selection"]["layers"]

    table = markdown_table(report)
    assert table.count("\n") == 1 + len(METHODS)  # header, rule, one row per method
    assert "| causal_lm | taskedge | yes |" in table and "| causal_lm | tinytrain | yes |" in table


@pytest.mark.parametrize(
    "kwargs",
    [
        {"tasks": ("vision",)},
        {"methods": ("full",)},
        {"methods": ()},
        {"cls_budget_fraction": 0.0},
        {"max_steps": 0},
        {"lm_pretrain_steps": -1},
    ],
)
def test_config_rejects_bad_values(kwargs):
    with pytest.raises(InvalidArgument):
        MethodsBenchConfig(**kwargs)
