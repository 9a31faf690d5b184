"""`splitft bench edge`: synthetic devices speak the real protocol and train the trunk; the report's
arithmetic is hand-computable; one real run (edges, device processes, CLI) gives a clean report.

Never the speed: the machine is shared, so these check structure, counts and arithmetic only.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge_server import EdgeServer
from splitft.bench.edge import EdgeBenchConfig, _edge_args, parse_shape
from splitft.bench.edge_device import DeviceSpec, SyntheticDevice, WindowResult
from splitft.bench.edge_report import build_report, markdown_table, percentile, window_summary
from splitft.cli import build_parser
from splitft.cli.commands.bench import edge_config
from splitft.errors import InvalidArgument
from splitft.model.lora import trunk_lora_json
from splitft.testing.tiny import lora_config_for

MIB = 1024  # KiB


def _tiny_llama_spec(edge: EdgeServer, **overrides: object) -> DeviceSpec:
    """A device of the shared test edge's tiny Llama (4 blocks, hidden 32)."""
    fields = {
        "edges": {"on": edge.address},
        "model": "llama",
        "model_type": "llama",
        "num_layers": 4,
        "hidden_size": 32,
        "device_layers": 1,
        "head_layers": 1,
        "lora_config_json": trunk_lora_json(lora_config_for("llama")),
        "batch": 2,
        "tokens": 8,
        "warmup_steps": 1,
        "seed": 3,
    }
    return DeviceSpec(**{**fields, **overrides})  # type: ignore[arg-type]


def test_synthetic_device_trains_the_trunk_adapter_through_the_real_protocol(edge: EdgeServer) -> None:
    device = SyntheticDevice(_tiny_llama_spec(edge))
    try:
        assert device.open().errors == 0
        trunk = device.trunks["on"]
        assert trunk.trainable and trunk.steps == 1  # the warm-up step reached the edge's optimizer
        start = time.monotonic()
        result = device.run("on", start, start + 0.2)
        assert result.errors == 0 and len(result.steps) >= 1
        assert result.steps[-1][1] >= start + 0.2
        assert trunk.steps == 1 + len(result.steps)
        lora_b = [t for name, t in trunk.export_adapter().items() if "lora_B" in name]
        assert lora_b and any(t.abs().sum() > 0 for t in lora_b)  # zero at init, moved by training
    finally:
        device.close()
    assert device.trunks == {}


def test_synthetic_device_counts_failures_instead_of_raising(edge: EdgeServer) -> None:
    device = SyntheticDevice(_tiny_llama_spec(edge, model="no-such-model"))
    try:
        opened = device.open()
        assert opened.errors == 1 and "NotFound" in opened.error_samples[0]
        result = device.run("on", time.monotonic(), time.monotonic())
        assert result.errors == 1 and result.steps == []
    finally:
        device.close()


def test_window_summary_is_hand_computable() -> None:
    # A: 2 steps ending at 101 -> 2 steps/s; B: 4 steps ending at 102 -> 2 steps/s; C failed at once.
    a = WindowResult(steps=[(100.0, 100.5), (100.5, 101.0)])
    b = WindowResult(steps=[(100.0, 100.4), (100.4, 100.9), (100.9, 101.5), (101.5, 102.0)])
    c = WindowResult()
    c.failed(RuntimeError("gone"))
    summary = window_summary([a, b, c], 100.0, tokens_per_step=64)
    assert summary["steps"] == 6 and summary["tokens_per_s"] == 256.0  # (2 + 2) steps/s x 64
    assert summary["errors"] == 1 and summary["error_samples"] == ["RuntimeError: gone"]
    assert sorted(round(s, 3) for s in summary["step_seconds"]) == [0.4, 0.5, 0.5, 0.5, 0.5, 0.6]
    assert percentile([float(v) for v in range(1, 11)], 0.5) == 5.0
    assert percentile([float(v) for v in range(1, 11)], 0.9) == 9.0


def _window(round_: int, n: int, mode: str, tokens_per_s: float, peak_kib: int) -> dict:
    return {
        "round": round_,
        "sessions": n,
        "mode": mode,
        "steps": 2,
        "tokens_per_s": tokens_per_s,
        "errors": 0,
        "error_samples": [],
        "step_seconds": [0.01 * n, 0.03 * n],
        "edge_cpu_cores": 0.5,
        "devices_cpu_cores": 0.1,
        "edge_peak_kib": peak_kib,
    }


def _group() -> dict:
    held = 120 * MIB
    tokens = {  # (round, N, mode) -> tokens/s
        (0, 1, "on"): 100, (0, 1, "off"): 50, (0, 2, "on"): 300, (0, 2, "off"): 100,
        (1, 1, "on"): 100, (1, 1, "off"): 100, (1, 2, "on"): 200, (1, 2, "off"): 100,
    }  # fmt: skip
    # Round 0's peaks: 2 active sessions above `held` by 8 MiB (on) and 4 MiB (off); round 1's higher.
    peaks = {(0, 1): 0, (0, 2): 8 * MIB, (1, 1): 50 * MIB, (1, 2): 50 * MIB}
    windows = [
        _window(r, n, mode, tps, held + peaks[(r, n)] // (1 if mode == "on" else 2))
        for (r, n, mode), tps in tokens.items()
    ]
    memory = {"idle_kib": 100 * MIB, "held_kib": held, "open_peak_kib": held, "peak_reset": True}
    return {
        "model": "bert",
        "shape": "1x64",
        "batch": 1,
        "tokens": 64,
        "open_errors": 0,
        "open_error_samples": [],
        "memory": {"on": dict(memory), "off": dict(memory)},
        "windows": windows,
    }


def test_report_ratios_are_per_round_and_hand_computable() -> None:
    config = {**vars(EdgeBenchConfig(sessions=(1, 2), shapes=("1x64",), models=("bert",)))}
    report = build_report(config, {"bert": {"dropout": 0.1}}, [_group()], seconds=1.0)
    one, two = report["results"]
    assert one["on_vs_off"] == {"median": 1.5, "min": 1.0, "max": 2.0, "rounds": [2.0, 1.0]}
    assert two["on_vs_off"]["median"] == 2.5  # 300/100 and 200/100
    assert two["on"]["vs_fewest_sessions"]["rounds"] == [3.0, 2.0]
    assert two["off"]["vs_fewest_sessions"]["rounds"] == [2.0, 1.0]
    assert two["on"]["tokens_per_s"] == {
        "median": 250.0,
        "min": 200.0,
        "max": 300.0,
        "rounds": [300.0, 200.0],
    }
    assert (two["on"]["step_ms_p50"], two["on"]["step_ms_p90"]) == (20.0, 60.0)  # 20 20 60 60 ms
    assert two["on"]["edge_peak_mib"] == 128.0  # round 0's, not round 1's
    assert (two["on"]["active_mib_per_session"], two["off"]["active_mib_per_session"]) == (4.0, 2.0)
    assert report["memory"][0]["held_mib_per_session"] == 10.0  # (120 - 100) MiB / 2 sessions
    assert report["memory"][0]["peak_mib"] == 170.0
    dropout = report["targets"]["dropout_model_2_sessions_vs_1_at_least_1_6"]
    assert [(t["batching"], t["vs_1_session"], t["met"]) for t in dropout] == [
        ("on", 2.5, True),
        ("off", 1.5, False),
    ]
    assert report["targets"]["32_sessions_zero_errors"] == [] and report["errors_total"] == 0
    table = markdown_table(report)
    assert "| bert | 1x64 | 2 | 250 (200-300) | 100 (100-100) | 2.50x (2.00-3.00) |" in table
    assert "NOT met" in table


def test_cli_options_override_the_quick_preset() -> None:
    args = build_parser().parse_args(["bench", "edge", "--quick", "--sessions", "1,2", "--models", "bert"])
    config = edge_config(args)
    assert (config.sessions, config.models, config.shapes, config.rounds) == ((1, 2), ("bert",), ("1x64",), 2)
    full = edge_config(build_parser().parse_args(["bench", "edge"]))
    assert full.sessions == (1, 2, 4, 8, 16, 32) and full.shapes == ("1x64", "4x64", "8x128")
    assert parse_shape("8X128") == (8, 128)
    for bad in ("8", "0x64", "2xone"):
        with pytest.raises(InvalidArgument):
            parse_shape(bad)
    with pytest.raises(InvalidArgument):
        EdgeBenchConfig(models=("gpt9",))
    # --dtype reaches both edges' command lines (float32 unless given); an unknown one is refused
    bf16 = edge_config(build_parser().parse_args(["bench", "edge", "--quick", "--dtype", "bfloat16"]))
    assert bf16.dtype == "bfloat16" and full.dtype == "float32"
    assert all(_edge_args(bf16, mode)[-2:] == ["--dtype", "bfloat16"] for mode in ("on", "off"))
    with pytest.raises(InvalidArgument, match="dtype must be one of float32, bfloat16, float16"):
        EdgeBenchConfig(dtype="int4")


@pytest.mark.slow
@pytest.mark.e2e
def test_bench_edge_command_runs_two_sessions_without_errors(tmp_path: Path) -> None:
    out = tmp_path / "edge.json"
    command = [sys.executable, "-m", "splitft.cli", "--log-level", "warning", "bench", "edge"]
    command += ["--models", "llama", "--sessions", "1,2", "--shapes", "1x16", "--rounds", "1"]
    command += ["--seconds", "1", "--warmup-steps", "1", "--json", str(out), "--markdown"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["benchmark"] == "edge" and report["errors_total"] == 0
    assert [(c["model"], c["shape"], c["sessions"]) for c in report["results"]] == [
        ("llama", "1x16", 1),
        ("llama", "1x16", 2),
    ]
    for cell in report["results"]:
        for mode in ("on", "off"):
            figures = cell[mode]
            assert figures["steps"] >= cell["sessions"] and figures["tokens_per_s"]["median"] > 0
            assert 0 < figures["step_ms_p50"] <= figures["step_ms_p90"]
            assert figures["edge_peak_mib"] > 0 and figures["errors"] == 0
        assert cell["on_vs_off"]["median"] > 0
    assert [m["mode"] for m in report["memory"]] == ["on", "off"]
    assert all(m["idle_mib"] < m["held_mib"] <= m["peak_mib"] for m in report["memory"])
    assert "| llama | 1x16 | 2 |" in proc.stdout  # --markdown: the table on stdout
