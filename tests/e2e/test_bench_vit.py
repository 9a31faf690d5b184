"""`splitft bench vit --quick` end to end: a ViT pretrained in the run on digits 0-4 and cached,
fine-tuned on held-out digits by TaskEdge, LoRA at the same budget, the ablations and the baselines;
the rate is chosen on validation, the test split is reported, and a second run reads the cache."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import ViTForImageClassification

from splitft.bench.vit import METHODS, QUICK, VitBenchConfig
from splitft.bench.vit.backbone import vit_config
from splitft.bench.vit.budgets import lora_shape, taskedge_targets
from splitft.bench.vit.config import MATCHED_METHODS
from splitft.bench.vit.data import PRETRAIN_CLASSES, TASK_CLASSES, load_digits_tensors, task_data
from splitft.bench.vit.finetune import load_for_task
from splitft.cli import main
from splitft.errors import InvalidArgument

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def _run(tmp_path, capsys, name: str) -> tuple[dict, str]:
    out = tmp_path / f"{name}.json"
    argv = ["bench", "vit", "--quick", "--cache-dir", str(tmp_path / "cache"), "--json", str(out)]
    assert main([*argv, "--markdown"]) == 0
    return json.loads(out.read_text()), capsys.readouterr().out


def _check_rows(report: dict) -> None:
    backbone = report["backbone"]["parameters"]
    rows_of_targets = len(report["backbone"]["taskedge_targets"]) * QUICK["hidden"]
    task = report["tasks"]["digits"]
    assert task["images"]["train"] <= 1000 and task["images"]["validation"] > 0 and task["images"]["test"] > 0
    seen = {(r["method"], r["budget_share"]) for r in task["rows"]}
    expected = {(m, b) for m in MATCHED_METHODS for b in QUICK["budgets"]} | {
        ("head_only", None),
        ("full", None),
    }
    assert seen == expected
    for row in task["rows"]:
        run = row["runs"][0]
        assert set(row["lr_validation"]) == {f"{row['lr']:.3g}"} and row["seeds"] == [0]
        assert row["lr_multiplier"] == 1.0 and row["lr_edge"] is None  # one rate: no choice, no edge
        # training changed what the model predicts on the test split, and lowered its training loss
        assert run["test_after"] != run["test_before"], row["method"]
        assert run["train_loss_last_10"] < run["train_loss_first"], row["method"]
        assert 0.0 <= row["test"]["mean"] <= 1.0 and row["test"]["std"] == 0.0
        if row["method"] in ("taskedge", "random", "magnitude"):
            assert row["entries"] == row["matched_entries"] and row["entries"] % rows_of_targets == 0
        if row["method"] in MATCHED_METHODS:
            assert row["budget"]["within_tolerance"], row
        head = run["head_parameters"]
        assert run["trainable_total"] == row["entries"] + head
    full = next(r for r in task["rows"] if r["method"] == "full")
    assert full["entries"] == backbone


def test_bench_vit_quick_reports_every_method_and_budget_and_reuses_the_cached_backbone(
    tmp_path, capsys
) -> None:
    report, markdown = _run(tmp_path, capsys, "first")
    assert report["benchmark"] == "vit"
    assert not set(report["data"]["pretrain_classes"]) & set(report["data"]["task_classes"])
    pretraining = report["backbone"]["pretraining"]["0"]
    assert pretraining["cached"] is False and pretraining["steps"] == QUICK["pretrain_steps"]
    assert pretraining["heldout_accuracy"] > 1 / len(PRETRAIN_CLASSES)  # it learnt something
    for budget in report["budgets"]:
        assert budget["lora"]["within_tolerance"]
        assert (
            budget["matched_entries"]
            == budget["taskedge_k_per_row"] * len(report["backbone"]["taskedge_targets"]) * QUICK["hidden"]
        )
    _check_rows(report)
    assert "| digits | 0.1% (" in markdown and "| taskedge |" in markdown and "| lora |" in markdown

    again, _ = _run(tmp_path, capsys, "second")  # the same backbone, read from the cache
    assert again["backbone"]["pretraining"]["0"]["cached"] is True
    assert len(list((tmp_path / "cache").iterdir())) == 1
    first = {(r["method"], r["budget_share"]): r["test"]["mean"] for r in report["tasks"]["digits"]["rows"]}
    second = {(r["method"], r["budget_share"]): r["test"]["mean"] for r in again["tasks"]["digits"]["rows"]}
    assert first == second  # one thread, the same seeds: the cached weights give the same figures


def test_bench_vit_budgets_targets_and_splits() -> None:
    config = VitBenchConfig(**{**QUICK, "methods": METHODS})
    model = ViTForImageClassification(vit_config(config, 5))
    targets = taskedge_targets(model)
    assert targets == [f"vit.layers.{i}.mlp.fc2" for i in range(QUICK["layers"])]
    for budget in (64, 128, 192, 1000):
        shape = lora_shape(model, budget)
        assert abs(shape.parameters / budget - 1.0) <= 0.2
        assert all(name.startswith("vit.layers.") for name in shape.modules)
    assert lora_shape(model, 64).modules == [f"vit.layers.{QUICK['layers'] - 1}.attention.q_proj"]
    digits, rotation = task_data("digits"), task_data("rotation")
    assert digits.num_labels == len(TASK_CLASSES) and rotation.num_labels == 4
    _, labels = load_digits_tensors()
    unseen = int(torch.isin(labels, torch.tensor(TASK_CLASSES)).sum())
    for data in (digits, rotation):
        sizes = [len(data.train), len(data.validation), len(data.test)]
        assert sizes[0] <= 1000 and sum(sizes) == unseen  # every unseen image, in exactly one split
        assert set(data.train.labels.tolist()) == set(range(data.num_labels))
    # rotation: the same images, each turned by its label's quarter turns
    for image, turned, turns in zip(
        digits.test.images, rotation.test.images, rotation.test.labels, strict=True
    ):
        assert torch.equal(torch.rot90(image, int(turns), dims=(1, 2)), turned)
    assert set(rotation.test.labels.tolist()) == {0, 1, 2, 3}


def test_bench_vit_refuses_bad_settings(tmp_path) -> None:
    with pytest.raises(InvalidArgument, match="budgets"):
        VitBenchConfig(budgets=(1.5,))
    with pytest.raises(InvalidArgument, match="patch_size"):
        VitBenchConfig(patch_size=3)
    assert main(["bench", "vit", "--budgets", "0", "--cache-dir", str(tmp_path)]) == 2


def test_bench_vit_head_is_seeded_and_new(tmp_path) -> None:
    """Every method starts from the same head values for a seed; other seeds differ."""
    config = VitBenchConfig(**QUICK, cache_dir=str(tmp_path))
    ViTForImageClassification(vit_config(config, len(PRETRAIN_CLASSES))).save_pretrained(str(tmp_path / "b"))
    one, two, other = (load_for_task(tmp_path / "b", 5, seed) for seed in (0, 0, 1))
    assert one.classifier.weight.shape == (5, QUICK["hidden"])
    assert bool((one.classifier.weight == two.classifier.weight).all())
    assert not bool((one.classifier.weight == other.classifier.weight).all())
