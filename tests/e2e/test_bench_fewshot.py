"""`splitft bench fewshot --quick` end to end, with either backbone: a backbone pretrained in the run
(bert-stdlib) or `bench vit`'s ViT pretrained on digits 0-4 and cached (vit-digits), few-shot
episodes of classes it never saw, TinyTrain under a memory and a MAC budget beside its baselines,
and the cost model's predicted bytes beside the measured ones."""

from __future__ import annotations

import json

import pytest

from splitft.bench.fewshot import QUICK, FewshotBenchConfig
from splitft.bench.fewshot.data import BACKBONE_PACKAGES, EPISODE_PACKAGES
from splitft.cli import main
from splitft.errors import InvalidArgument

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def test_bench_fewshot_quick_reports_every_method_and_predicted_vs_measured(tmp_path, capsys) -> None:
    out = tmp_path / "report.json"
    argv = ["bench", "fewshot", "--quick", "--backbone", "bert-stdlib", "--json", str(out), "--markdown"]
    assert main(argv) == 0
    markdown = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["benchmark"] == "fewshot" and report["meta_training"] is False
    assert report["backbone"] == "bert-stdlib"
    assert not set(BACKBONE_PACKAGES) & set(EPISODE_PACKAGES)
    config = report["config"]
    assert config["shots"] == [1, 5] and config["seeds"] == [0] and config["budgets"] == [[0.2, 0.3]]
    methods = {"prototypes", "last_layer", "full", "tinytrain@0.2/0.3"}
    for shots in (1, 5):
        runs = {r["method"]: r for r in report["runs"] if r["shots"] == shots}
        assert set(runs) == methods
        assert all(0.0 <= r["accuracy"] <= 1.0 for r in runs.values())
        full, last, tiny = runs["full"], runs["last_layer"], runs["tinytrain@0.2/0.3"]
        # the head trains in every method; full trains every weight, TinyTrain a budgeted part
        assert last["trainable"] < tiny["trainable"] < full["trainable"]
        assert last["backward_macs"] < tiny["backward_macs"] < full["backward_macs"]
        assert tiny["backward_macs"] - last["backward_macs"] <= tiny["budget"]["macs"]
        assert tiny["predicted_bytes"] - 3 * 4 * last["trainable"] <= tiny["budget"]["memory_bytes"]
        assert (
            last["measured_bytes"] < full["measured_bytes"]
            and tiny["measured_bytes"] < full["measured_bytes"]
        )
    selections = report["selections"]
    assert len(selections) == 2 and all(s["layers"] >= 1 for s in selections)
    for selection in selections:
        assert selection["predicted_over_measured"] == pytest.approx(
            selection["predicted_bytes"] / selection["measured_bytes"], abs=1e-3
        )
        assert 0.75 <= selection["predicted_over_measured"] <= 1.25
    assert "| 5 | tinytrain@0.2/0.3 |" in markdown


def test_bench_fewshot_quick_on_the_digits_vit(tmp_path, capsys) -> None:
    """The default backbone: 5-way episodes over digits 5-9, which the ViT never saw; every method
    trains (a larger TinyTrain budget than the BERT test's: the quick ViT's smallest layer costs
    more than 20% of training every block Linear on a 5-shot support set)."""
    out, cache = tmp_path / "report.json", tmp_path / "cache"
    argv = [
        "bench",
        "fewshot",
        "--quick",
        "--cache-dir",
        str(cache),
        "--budgets",
        "0.4:0.4",
        "--json",
        str(out),
    ]
    assert main(argv) == 0
    capsys.readouterr()
    report = json.loads(out.read_text())
    assert report["backbone"] == "vit-digits" and report["meta_training"] is False
    assert report["data"]["backbone_classes"] == ["0", "1", "2", "3", "4"]
    assert report["data"]["episode_classes"] == ["5", "6", "7", "8", "9"]
    assert all(n >= 150 for n in report["data"]["episode_pool"].values())  # ~180 images per digit
    pretraining = report["backbones"]["0"]
    assert pretraining["cached"] is False and pretraining["steps"] == QUICK["vit"]["pretrain_steps"]
    assert len(list(cache.iterdir())) == 1  # bench vit's cache, one backbone
    queries = report["config"]["queries"]
    for shots in (1, 5):
        runs = {r["method"]: r for r in report["runs"] if r["shots"] == shots}
        assert set(runs) == {"prototypes", "last_layer", "full", "tinytrain@0.4/0.4"}
        full, last, tiny = runs["full"], runs["last_layer"], runs["tinytrain@0.4/0.4"]
        assert all(0.0 <= r["accuracy"] <= 1.0 for r in runs.values())
        # every query image scored: accuracies are multiples of 1 / (5 ways x queries)
        assert all(
            abs(r["accuracy"] * 5 * queries - round(r["accuracy"] * 5 * queries)) < 1e-4
            for r in runs.values()
        )
        assert last["trainable"] < tiny["trainable"] < full["trainable"] == pretraining["parameters"]
        assert last["backward_macs"] < tiny["backward_macs"] < full["backward_macs"]
        assert 0 < last["measured_bytes"] < tiny["measured_bytes"] < full["measured_bytes"]
    selections = report["selections"]
    assert len(selections) == 2 and all(s["layers"] >= 1 for s in selections)
    assert all(0.75 <= s["predicted_over_measured"] <= 1.25 for s in selections)


def test_bench_fewshot_refuses_a_bad_budget(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "fewshot", "--budgets", "0.1"])
    assert exit_info.value.code == 2
    assert "MEMORY:MACS" in capsys.readouterr().err


def test_bench_fewshot_refuses_bad_backbone_settings() -> None:
    with pytest.raises(InvalidArgument, match="backbone"):
        FewshotBenchConfig(backbone="resnet")
    with pytest.raises(InvalidArgument, match="vit overrides"):
        FewshotBenchConfig(vit={"hiden": 32})
    FewshotBenchConfig(backbone="bert-stdlib", ways=6)  # six held-out packages
    assert main(["bench", "fewshot", "--ways", "6"]) == 2  # five unseen digits
