"""The demo and the step benchmark run end to end (edge as a real subprocess) and report real figures."""

from __future__ import annotations

import io
import json

import pytest
import torch
from peft import PeftModel
from rich.console import Console
from transformers import AutoTokenizer, BertForSequenceClassification

from splitft.bench.step import StepBenchConfig, run_step_bench
from splitft.data.shards import dirichlet_shards, shard_histogram
from splitft.data.stdlib_task import build_stdlib_task
from splitft.demo.loop import LoopDemoConfig, run_loop_demo
from splitft.demo.sdk import DemoConfig, default_model_dir, run_demo


@pytest.mark.slow
def test_demo_learns_and_saves_a_loadable_adapter(tmp_path):
    config = DemoConfig(epochs=2, max_per_class=40, out_dir=str(tmp_path), batch_size=16)
    summary = run_demo(config)
    assert summary["accuracy_after"] > summary["accuracy_before"]
    assert summary["last_loss"] < summary["first_loss"]
    assert summary["bytes_sent"] > 0 and summary["bytes_received"] > 0
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == summary["steps"]

    # The adapter is plain peft: it loads on the whole model and predicts like the split model did.
    task = build_stdlib_task(max_per_class=40)
    base = BertForSequenceClassification.from_pretrained(
        str(default_model_dir()), num_labels=len(task.labels)
    )
    model = PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(default_model_dir()))
    texts = [e.text for e in task.heldout]
    enc = tokenizer(texts, padding=True, truncation=True, max_length=config.max_length, return_tensors="pt")
    with torch.no_grad():
        predictions = model(**enc).logits.argmax(-1)
    accuracy = (predictions == torch.tensor([e.label for e in task.heldout])).float().mean().item()
    assert accuracy == pytest.approx(summary["accuracy_after"], abs=1e-3)


@pytest.mark.slow
def test_whole_loop_demo_runs_a_federated_job_after_the_independent_one(tmp_path):
    config = LoopDemoConfig(
        epochs=1,
        max_per_class=24,
        batch_size=8,
        max_length=32,
        rounds=2,
        local_steps=2,
        out_dir=str(tmp_path),
    )
    printed = io.StringIO()
    summary = run_loop_demo(config, Console(file=printed, width=200))
    assert summary["state"] == "succeeded" and summary["devices"] == 3
    per_device = summary["per_device"]
    task = build_stdlib_task(max_per_class=24)
    labels = [e.label for e in task.train]
    shards = dirichlet_shards(labels, 3, 0.5, 0)  # the demo's split: non-IID, seeded
    assert [row["per_class"] for row in per_device.values()] == shard_histogram(labels, shards)
    fed = summary["federated"]
    assert fed["state"] == "succeeded" and 0 <= fed["accuracy"] <= 1
    assert [(r["number"], r["state"], len(r["participants"])) for r in fed["rounds"]] == [
        (0, "aggregated", 3),
        (1, "aggregated", 3),
    ]
    assert json.loads((tmp_path / "summary.json").read_text())["federated"]["job_id"] == fed["job_id"]
    text = printed.getvalue()
    assert "global adapter (federated job)" in text and "own adapter (independent job)" in text
    assert f"{fed['accuracy']:.1%}" in text and "round 1: aggregated, 3 devices" in text
    # The closing summary: one row per job; the operator key for /ui and `splitft jobs` in a 0600 file.
    closing = text[text.rindex("held-out accuracy ") :]  # the summary table, from its header on
    assert summary["job_id"] in closing and fed["job_id"] in closing and "2 rounds" in closing
    assert (tmp_path / "operator.key").stat().st_mode & 0o777 == 0o600
    # Each agent logged its sessions' progress (steps, loss, rate) up to the last step.
    for log in sorted((tmp_path / "loop").glob("agent-*.log")):
        logged = " ".join(log.read_text().split())
        assert "(100%), loss" in logged and "examples/s" in logged, log
    # The global adapter is plain peft: it loads on the whole model.
    base = BertForSequenceClassification.from_pretrained(
        str(default_model_dir()), num_labels=len(task.labels)
    )
    PeftModel.from_pretrained(base, fed["adapter"])


@pytest.mark.slow
def test_step_benchmark_reports_every_variant_and_the_device_share():
    report = json.loads(run_step_bench(StepBenchConfig(layers=4, hidden=64, batch=4, tokens=16, repeats=2)))
    assert report["rounds"] == 2 and report["order"].startswith("alternating")
    threads, default = report["threads"], report["default_threads"]
    # the one-process baseline: the split's per-process budget, and the split's total
    assert threads["local"] == {"device": 1, "edge": None}
    assert threads["local_equal_total"] == {"device": 2, "edge": None}
    assert threads["split_mtls"] == {"device": 1, "edge": 1}
    # what a user gets without choosing: torch's default here, `edge serve` without --threads there
    assert threads["local_default"] == {"device": default, "edge": None}
    assert threads["split_default"] == {"device": default, "edge": 0}
    assert threads["split_default_teams_kept"] == {"device": default, "edge": 0}
    for run in ("local", "local_equal_total", "local_default", "split_insecure", "split_mtls",
                "split_mtls_per_call", "split_mtls_pipelined_2", "split_default"):  # fmt: skip
        timing = report["step_seconds"][run]
        assert 0 < timing["min"] <= timing["q1"] <= timing["median"] <= timing["q3"] <= timing["max"]
        assert report["cpu_seconds_per_step"][run]["device"] >= 0
    ratios = report["ratios"]
    for key in (
        "split_mtls_vs_local",
        "split_mtls_vs_local_equal_total",
        "split_insecure_vs_local_equal_total",
        "split_mtls_pipelined_2_vs_local_equal_total",
        "split_default_vs_local_default",
        "split_default_vs_split_default_teams_kept",
        "split_mtls_per_call_vs_split_mtls",
    ):
        assert 0 < ratios[key]["min"] <= ratios[key]["median"] <= ratios[key]["max"]
    share = report["device_share"]
    assert 0 < share["device_parameters"] < share["whole_model_parameters"]


@pytest.mark.slow
def test_control_benchmark_reports_latency_percentiles():
    from splitft.bench.control import ControlBenchConfig, run_control_bench

    report = json.loads(run_control_bench(ControlBenchConfig(clients=2, requests=5, jobs=2)))
    assert report["requests"] == 10 and report["errors"] == 0
    latency = report["latency_ms"]
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"]


@pytest.mark.slow
def test_the_sdk_demo_runs_with_quantized_frozen_weights(tmp_path):
    """`splitft demo --sdk --quantize int8`: the edge serves its trunk in int8, the device quantizes
    its own blocks, and the split model still learns."""
    from splitft.cli import main

    argv = ["demo", "--sdk", "--quantize", "int8", "--epochs", "2", "--max-per-class", "40"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["last_loss"] < summary["first_loss"]
    assert summary["accuracy_after"] > summary["accuracy_before"]
    assert "splitft.model.quantize: quantized" in (tmp_path / "edge.log").read_text()  # the trunk
