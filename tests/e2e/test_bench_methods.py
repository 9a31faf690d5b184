"""`splitft bench methods --quick` end to end on a tiny causal LM: every method and baseline trains,
choices are made on a validation split, figures come from a separate test split, and the
budget-matched methods report their trainable entries against the matched budget."""

from __future__ import annotations

import json

import pytest

from splitft.bench.methods import (
    METHODS,
    QUICK,
    SPLIT_METHODS,
    MethodsBenchConfig,
    markdown_table,
    run_methods_bench,
)
from splitft.bench.methods.budgets import budget_ratio, lora_shape, taskedge_fraction, taskedge_k
from splitft.errors import InvalidArgument

# QUICK, with two learning rates so that the choice on validation is exercised.
SMOKE = MethodsBenchConfig(**{**QUICK, "lr_multipliers": (0.5, 1.0), "methods": METHODS})  # type: ignore[arg-type]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_methods_bench_quick_every_method_trains_choices_on_validation_figures_on_test():
    report = json.loads(run_methods_bench(SMOKE))
    assert report["benchmark"] == "methods"
    data = report["data"]
    assert data["train_examples"] > 0 and data["validation_examples"] > 0 and data["test_examples"] > 0
    task = report["tasks"]["causal_lm"]
    assert task["metric"] == "test_loss"
    assert set(task["methods"]) == set(METHODS)
    budget = task["budget_parameters"]
    assert budget % task["taskedge_k_per_row"] == 0  # k entries in every row of every target

    for method, result in task["methods"].items():
        assert result["split"] is (method in SPLIT_METHODS)
        assert result["seeds"] == [0]
        tried = result["lr_validation"]
        assert len(tried) == 2
        # The chosen rate is the one with the best VALIDATION loss; the reported figure is the test one.
        best = min(tried, key=lambda lr: tried[lr])
        assert float(best) == pytest.approx(result["lr"], rel=1e-3)
        run = result["runs"][0]
        assert run["metric"]["validation"] == tried[best]
        assert result["test"]["per_seed"] == [run["metric"]["after"]]
        assert run["metric"]["after"] != run["metric"]["validation"]  # two different splits
        assert run["steps"] == QUICK["max_steps"]
        assert run["metric"]["after"] < run["metric"]["before"] or method == "tinytrain_nocost", method
        entries = result["budget"]["entries"]
        assert entries == run["trainable"]["method"] > 0
        assert result["budget"]["ratio"] == pytest.approx(entries / budget, abs=1e-4)

    methods = task["methods"]
    # TaskEdge and its two ablations train exactly the matched budget; LoRA's shape meets it here.
    for method in ("taskedge", "random", "magnitude", "lora"):
        assert methods[method]["budget"]["entries"] == budget, method
    assert methods["full"]["budget"]["entries"] > 10 * budget and not methods["full"]["budget_matched"]
    assert methods["random"]["runs"][0]["selection"]["k_per_row"] == task["taskedge_k_per_row"]
    # Every method starts from the same model: the same test loss before training.
    befores = [r["before"] for r in methods.values()]
    assert max(befores) - min(befores) < 1e-4

    table = markdown_table(report)
    assert table.count("\n") == 1 + len(METHODS)
    assert "| causal_lm | magnitude | no |" in table and "(n=1)" in table


def test_lora_shape_meets_a_budget_the_full_target_set_cannot():
    from transformers import BertConfig, BertModel

    model = BertModel(
        BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    )
    names = [n for n, m in model.named_modules() if type(m).__name__ == "Linear" and ".layer." in n]
    suffixes = sorted({n.split(".", 3)[3] for n in names})
    per_rank_all = sum(m.in_features + m.out_features for n, m in model.named_modules() if n in names)
    budget = int(2.5 * per_rank_all)  # ranks 2 and 3 of every module miss it by 20%
    shape = lora_shape(model, names, suffixes, budget)
    assert abs(shape.parameters / budget - 1) <= 0.05, shape
    assert shape.parameters == shape.rank * sum(
        model.get_submodule(n).in_features + model.get_submodule(n).out_features
        for n in names
        if any(n == t or n.endswith("." + t) for t in shape.targets)
    )


def test_taskedge_budget_is_the_nearest_multiple_of_rows():
    assert taskedge_k(113_573, 20_736) == 5
    fraction = taskedge_fraction(5 * 20_736, 22_713_732)
    assert int(fraction * 22_713_732) == 5 * 20_736
    assert budget_ratio(104, 100) == {"ratio": 1.04, "within_tolerance": True}
    assert budget_ratio(106, 100)["within_tolerance"] is False


@pytest.mark.parametrize(
    "kwargs",
    [
        {"tasks": ("vision",)},
        {"methods": ("everything",)},
        {"methods": ()},
        {"cls_budget_fraction": 0.0},
        {"max_steps": 0},
        {"lm_pretrain_steps": -1},
        {"seeds": ()},
        {"seeds": (1, 1)},
        {"lr_multipliers": (0.0,)},
        {"validation_fraction": 1.0},
    ],
)
def test_config_rejects_bad_values(kwargs):
    with pytest.raises(InvalidArgument):
        MethodsBenchConfig(**kwargs)
