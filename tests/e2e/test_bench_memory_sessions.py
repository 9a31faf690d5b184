"""`splitft bench memory` and `bench sessions`: the JSON's shape and arithmetic, never its speed.

The measurement code runs in this process against the shared in-process edge (fast); the reports
are checked against hand computation from given measurements; one run of each command as a real
subprocess (edge and workers included) checks the whole path and that stdout is the JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch

from device_client import EdgeConnection
from edge_server import EdgeServer
from splitft.bench.memory import ADAM_COPIES, MIB, MODES, MemoryBenchConfig, measure, memory_report
from splitft.bench.sessions import SessionsBenchConfig, bench_models, summarize, train_window
from splitft.cli import build_parser
from splitft.errors import InvalidArgument
from splitft.testing.tiny import TinyModel, make_batch
from tests.support.split import split_llama


def _spec(tiny: TinyModel, edge: EdgeServer, side: str, mode: str) -> dict:
    return {
        **vars(MemoryBenchConfig(layers=4, hidden=32, batch=2, tokens=8, steps=2)),
        "model_dir": str(tiny.path),
        "warmup_dir": str(tiny.path),
        "model_name": "llama",
        "warmup_name": "llama",
        "model_class": tiny.model_class.__name__,
        "edge": edge.address,
        "side": side,
        "mode": mode,
    }


@pytest.mark.parametrize("side", ["whole", "device"])
def test_memory_worker_measures_allocations_and_expectation(
    side: str, tiny_models: dict[str, TinyModel], edge: EdgeServer
) -> None:
    result = measure(_spec(tiny_models["llama"], edge, side, "alloc"))
    expected = result["expected"]
    assert expected["weights"] > 0 and expected["saved_activations"] > 0
    # LoRA parameters, their gradients and AdamW's two moments, float32
    assert expected["adapter_state"] == ADAM_COPIES * 4 * result["parameters"]["trainable"]
    assert 0 < result["torch_at_train_start_bytes"] < result["torch_train_peak_bytes"]
    assert 0 <= result["file_mapped_weights_bytes"] <= expected["weights"]
    if side == "device":
        assert result["wire"]["up"] > 0 and result["wire"]["down"] > 0
    else:
        assert result["wire"] is None


def test_device_holds_fewer_parameters_than_the_whole_model(
    tiny_models: dict[str, TinyModel], edge: EdgeServer
) -> None:
    tiny = tiny_models["llama"]
    whole, device = (measure(_spec(tiny, edge, side, "rss"))["parameters"] for side in ("whole", "device"))
    assert 0 < device["frozen"] < whole["frozen"]
    assert 0 < device["trainable"] < whole["trainable"]


def _worker_result(rss: int, fixed: int, torch_peak: int, mapped: int, frozen: int) -> dict[str, dict]:
    common = {"baseline_bytes": 400 * MIB, "load_peak_delta_bytes": MIB, "peak_was_reset": True}
    alloc = {
        "parameters": {"frozen": frozen, "trainable": 10},
        "expected": {"weights": 10 * MIB, "adapter_state": 2 * MIB, "saved_activations": 28 * MIB},
        "torch_load_peak_bytes": 0,
        "torch_at_train_start_bytes": 0,
        "torch_train_peak_bytes": torch_peak,
        "file_mapped_weights_bytes": mapped,
        "wire": {"up": 5, "down": 7},
    }
    return {
        "rss": {**common, "train_peak_delta_bytes": rss},
        "rss_fixed_threshold": {**common, "train_peak_delta_bytes": fixed},
        "alloc": {**common, **alloc, "train_peak_delta_bytes": 0},
    }


def test_memory_report_ratios_come_from_the_measurements() -> None:
    results = {
        "whole": _worker_result(160 * MIB, 100 * MIB, 70 * MIB, 10 * MIB, 1000),
        "device": _worker_result(120 * MIB, 50 * MIB, 38 * MIB, 10 * MIB, 250),
    }
    report = memory_report(MemoryBenchConfig(), results)
    device = report["device"]
    assert set(results["device"]) == set(MODES)
    assert device["expected_mib"] == {"weights": 10, "adapter_state": 2, "saved_activations": 28, "total": 40}
    assert device["rss"]["ratio_train_peak_vs_expected"] == 3.0  # 120 / 40
    assert device["rss"]["fixed_threshold_ratio_vs_expected"] == 1.25  # 50 / 40
    assert device["torch_allocated"]["ratio_train_peak_vs_expected"] == 1.2  # (38 + 10) / 40
    assert report["device_vs_whole"]["frozen_parameters_fraction"] == 0.25
    assert report["device_vs_whole"]["rss_train_peak_fraction"] == 0.75  # 120 / 160
    assert report["device_vs_whole"]["torch_train_peak_fraction"] == 0.6  # 48 / 80
    target = report["target"]
    assert target["max_ratio"] == 1.3
    assert (target["device_rss_within"], target["device_rss_fixed_threshold_within"]) == (False, True)
    assert target["device_torch_within"] is True


def test_sessions_summary_is_hand_computable() -> None:
    start = 100.0
    # session A: 2 steps ending at 101 -> 2 steps/s; session B: 4 steps ending at 102 -> 2 steps/s
    a = [[100.0, 100.5], [100.5, 101.0]]
    b = [[100.0, 100.4], [100.4, 100.9], [100.9, 101.5], [101.5, 102.0]]
    summary = summarize([a, b], start, tokens_per_step=16)
    assert summary["steps"] == 6
    assert summary["steps_per_s"] == 4.0
    assert summary["tokens_per_s"] == 64.0
    assert summary["per_session_steps_per_s"] == 2.0
    assert summary["step_seconds_median"] == 0.5  # durations 0.5 0.5 0.4 0.5 0.6 0.5


def test_train_window_steps_through_the_window(
    tiny_models: dict[str, TinyModel], conn: EdgeConnection
) -> None:
    with split_llama(tiny_models["llama"], conn) as model:
        optimizer = model.configure_optimizer(torch.optim.AdamW, lr=1e-3)
        batch = make_batch("llama", torch.Generator().manual_seed(0), 2, 8)
        start = time.monotonic() + 0.05
        steps = train_window(model, optimizer, batch, start, start + 0.2)
        assert model.stats.steps == len(steps) >= 1
    assert steps[0][0] >= start and steps[-1][1] >= start + 0.2
    assert all(began < ended for began, ended in steps)


def test_cli_bench_parsers_map_to_the_configs() -> None:
    args = build_parser().parse_args(["bench", "sessions", "--sessions", "1,3", "--seconds", "2.5"])
    assert (args.sessions, args.seconds, args.hidden, args.head_layers) == ([1, 3], 2.5, 256, 1)
    args = build_parser().parse_args(["bench", "memory"])
    assert (args.layers, args.hidden, args.batch, args.tokens) == (8, 512, 8, 128)
    assert (args.device_layers, args.head_layers, args.steps) == (1, 0, 3)
    args = build_parser().parse_args(["bench", "step"])
    assert (args.layers, args.hidden, args.batch, args.tokens) == (8, 512, 8, 128)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "sessions", "--sessions", "one"])
    with pytest.raises(InvalidArgument):
        SessionsBenchConfig(sessions=(0,))
    args = build_parser().parse_args(["bench", "sessions"])
    assert (args.dropout_family, args.dropout) == ("bert", 0.1)
    with pytest.raises(InvalidArgument, match="llama has no dropout modules"):
        SessionsBenchConfig(dropout_family="llama")
    with pytest.raises(InvalidArgument):
        SessionsBenchConfig(dropout=0.0)
    with pytest.raises(InvalidArgument):
        MemoryBenchConfig(layers=2, device_layers=1, head_layers=1)


def test_sessions_bench_runs_a_dropout_model_after_the_first() -> None:
    assert bench_models(SessionsBenchConfig()) == [("bench", "llama", 0.0), ("bench-dropout", "bert", 0.1)]
    assert bench_models(SessionsBenchConfig(family="gpt2", dropout_family="none")) == [("bench", "gpt2", 0.0)]


def test_tiny_dropout_models_have_dropout_modules(tmp_path) -> None:
    from splitft.testing.tiny import save_tiny_model

    for family in ("bert", "gpt2"):
        tiny = save_tiny_model(family, tmp_path / family, layers=2, dropout=0.2)
        model = tiny.model_class.from_pretrained(tiny.path)
        assert {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)} == {0.2}
    # Llama's attention dropout is a rate, not a module; the edge sees it too (per-session RNG).
    from splitft.model.randomness import has_dropout

    llama = save_tiny_model("llama", tmp_path / "llama", layers=2, dropout=0.1)
    assert has_dropout(llama.model_class.from_pretrained(llama.path))


def _cli_json(*args: str) -> dict:
    command = [sys.executable, "-m", "splitft.cli", "--log-level", "warning", "bench", *args]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


TINY = ["--layers", "3", "--hidden", "32", "--batch", "2", "--tokens", "8"]


@pytest.mark.slow
@pytest.mark.e2e
def test_bench_memory_command_prints_the_report() -> None:
    report = _cli_json("memory", *TINY, "--steps", "2")
    assert report["benchmark"] == "memory" and report["config"]["steps"] == 2
    for side in ("whole", "device"):
        assert report[side]["expected_mib"]["total"] > 0
        assert report[side]["rss"]["ratio_train_peak_vs_expected"] > 0
        assert report[side]["torch_allocated"]["train_peak_mib"] > 0
    assert report["device"]["wire_bytes_per_step"]["up"] > 0
    assert 0 < report["device_vs_whole"]["frozen_parameters_fraction"] < 1


@pytest.mark.slow
@pytest.mark.e2e
def test_bench_sessions_command_honours_the_session_counts() -> None:
    report = _cli_json("sessions", *TINY, "--sessions", "1,2", "--seconds", "0.3", "--warmup-steps", "1")
    assert report["baseline_sessions"] == 1
    models = report["models"]
    assert [(m["model"], m["family"], m["dropout"]) for m in models] == [
        ("bench", "llama", 0.0),
        ("bench-dropout", "bert", 0.1),
    ]
    for model in models:
        rounds = model["rounds"]
        assert [r["sessions"] for r in rounds] == [1, 2]
        assert all(r["steps"] >= r["sessions"] and r["steps_per_s"] > 0 for r in rounds)
        assert rounds[0]["throughput_vs_baseline"] == 1.0
        assert rounds[1]["throughput_vs_baseline"] == round(
            rounds[1]["steps_per_s"] / rounds[0]["steps_per_s"], 3
        )
