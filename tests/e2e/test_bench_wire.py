"""`splitft bench wire` and `bench converge`: what they measure and report, never their speed.

The byte phases are measured in this process against the shared in-process edge and checked
against the tensors' own sizes; one run of each command as a real subprocess (its own edge process)
checks the whole path and that stdout is the JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from device_client import EdgeConnection
from edge_server import EdgeServer
from splitft.bench.common import BenchModelConfig, split_model
from splitft.bench.converge import ConvergeBenchConfig, run_converge_bench
from splitft.bench.wire import WireBenchConfig, measure_phases
from splitft.errors import InvalidArgument
from splitft.testing.tiny import TinyModel, make_batch

SHAPE = BenchModelConfig(layers=4, hidden=32, batch=4, tokens=16, device_layers=1, head_layers=1)


def _phases(tiny: TinyModel, edge: EdgeServer, codec: str) -> dict[str, dict[str, int]]:
    batch = make_batch("llama", torch.Generator().manual_seed(0), SHAPE.batch, SHAPE.tokens)
    with EdgeConnection(edge.address, insecure=True) as conn:
        model, optimizer = split_model(tiny.path, conn, SHAPE, codec, edge_model="llama")
        with model:
            return measure_phases(model, optimizer, batch, steps=2)


def test_raw_phases_carry_the_activations_and_gradients_at_fp32(tiny_models, edge) -> None:
    phases = _phases(tiny_models["llama"], edge, "raw")
    tensor = SHAPE.batch * SHAPE.tokens * SHAPE.hidden * 4  # one fp32 hidden state
    for name in ("activations", "gradients"):
        for direction in ("up", "down"):
            # one tensor each way, plus headers, ids and (forward up) the attention mask
            assert tensor < phases[name][direction] < tensor * 1.2, (name, direction, phases)
    assert 0 < phases["optimizer"]["up"] < 1000


def test_codecs_shrink_their_own_direction_only(tiny_models, edge) -> None:
    raw = _phases(tiny_models["llama"], edge, "raw")
    mixed = _phases(tiny_models["llama"], edge, "activations=fp16,gradients=topk:0.05")
    for direction in ("up", "down"):
        assert mixed["activations"][direction] < 0.6 * raw["activations"][direction]
        assert mixed["gradients"][direction] < 0.2 * raw["gradients"][direction]
    int4 = _phases(tiny_models["llama"], edge, "int4")
    assert int4["activations"]["down"] < 0.2 * raw["activations"]["down"]


def test_configs_canonicalize_codecs_always_include_raw_and_refuse_bad_input() -> None:
    config = WireBenchConfig(codecs=("int8", "gradients=topk:0.010,activations=int8"))
    assert config.codecs == ("raw", "int8", "activations=int8,gradients=topk:0.01")
    with pytest.raises(InvalidArgument, match="unknown codec"):
        WireBenchConfig(codecs=("int9",))
    with pytest.raises(InvalidArgument, match="steps"):
        WireBenchConfig(steps=0)
    with pytest.raises(InvalidArgument, match="trunk block"):
        WireBenchConfig(layers=2)
    with pytest.raises(InvalidArgument, match="gradients only"):
        ConvergeBenchConfig(codecs=("topk:0.1",))
    with pytest.raises(InvalidArgument, match="tasks"):
        ConvergeBenchConfig(tasks=("translation",))
    with pytest.raises(InvalidArgument, match="lm_layers"):
        ConvergeBenchConfig(lm_layers=2)


@pytest.mark.slow
@pytest.mark.e2e
def test_bench_wire_command_prints_ratios_to_raw() -> None:
    command = [sys.executable, "-m", "splitft.cli", "--log-level", "warning", "bench", "wire"]
    command += ["--layers", "3", "--hidden", "64", "--batch", "2", "--tokens", "16", "--steps", "1"]
    command += ["--codec", "int8", "--codec", "activations=int4,gradients=lowrank:4:noef"]  # the default
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    rows = report["bytes_per_step"]
    assert list(rows) == ["raw", "int8", "activations=int4,gradients=lowrank:4"]
    for row in rows.values():
        assert row["total"] == row["up"] + row["down"]
        assert row["ratio_to_raw"] == round(row["total"] / rows["raw"]["total"], 4)
    assert 0.25 < rows["int8"]["ratio_to_raw"] < 0.35  # hidden 64: 66 bytes a row instead of 256
    assert [t["codec"] for t in report["targets"]] == ["int8", "activations=int4,gradients=lowrank:4"]


@pytest.mark.slow
@pytest.mark.e2e
def test_converge_is_deterministic_per_seed_and_reports_gaps_to_raw() -> None:
    config = ConvergeBenchConfig(
        tasks=("causal_lm",),
        codecs=("raw", "int8"),
        steps=3,
        lm_pretrain_steps=2,
        max_per_class=12,
        threads=1,
    )
    threads = torch.get_num_threads()
    report = json.loads(run_converge_bench(config))
    assert torch.get_num_threads() == threads  # the caller's thread count is given back
    runs = report["tasks"]["causal_lm"]["codecs"]
    assert list(runs) == ["raw", "int8", "raw (repeat)"]
    # The same seed, data and codec give the same numbers: a gap is the codec's, not noise.
    assert runs["raw (repeat)"]["heldout_loss"] == runs["raw"]["heldout_loss"]
    assert runs["raw (repeat)"]["gap_percent"] == 0.0
    gap = 100 * (runs["int8"]["heldout_loss"] - runs["raw"]["heldout_loss"]) / runs["raw"]["heldout_loss"]
    assert runs["int8"]["gap_percent"] == round(gap, 3)
    assert runs["int8"]["train_bytes_per_step"] < 0.5 * runs["raw"]["train_bytes_per_step"]
    (target,) = report["targets"]
    assert target["codec"] == "int8" and target["target"] == 2.0
    assert target["met"] == (runs["int8"]["gap_percent"] <= 2.0)
    assert target["train_met"] == (runs["int8"]["train_gap_percent"] <= 2.0)


def test_cli_codec_arguments_are_canonical_and_bad_ones_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    from splitft.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["demo", "--codec", "gradients=lowrank:8:ef,activations=int8"])
    assert args.codec == "activations=int8,gradients=lowrank:8:ef"
    args = parser.parse_args(
        ["bench", "wire", "--codec", "int4", "--codec", "activations=int8,gradients=topk:0.01"]
    )
    assert args.codec == ["int4", "activations=int8,gradients=topk:0.01"]
    for argv in (["demo", "--codec", "topk:0.01"], ["bench", "converge", "--codec", "int9"]):
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args(argv)
        assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "for gradients only" in err and "unknown codec 'int9'" in err
