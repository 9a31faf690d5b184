"""`splitft emulator build` on real saved models of every family: the uniform layer drop, the
original device blocks, embeddings and head, distillation that lowers the normalized MSE and is
written to disk, and the CLI's refusals (exit 2, nothing written)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from splitft.cli import main
from splitft.emulator.distill import DistillConfig, evaluate_distance
from splitft.emulator.layout import EmulatorLayout
from splitft.emulator.make import build_emulator
from splitft.model.families import family_for
from splitft.testing.tiny import TinyModel, make_batch, save_tiny_model


@pytest.fixture(scope="module")
def six_layer(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TinyModel]:
    root = tmp_path_factory.mktemp("six")
    return {f: save_tiny_model(f, root / f, layers=6) for f in ("llama", "gpt2", "bert", "vit")}


def _stderr(capsys: pytest.CaptureFixture[str]) -> str:
    """The CLI's log on stderr, with the console's line wrapping undone."""
    return " ".join(capsys.readouterr().err.split())


def _state(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert", "vit"])
def test_trunk_is_uniformly_dropped_and_the_rest_is_original(six_layer, family, tmp_path) -> None:
    tiny = six_layer[family]
    report = build_emulator(tiny.path, tmp_path / "emu", device_layers=1, head_layers=1, keep=2)
    assert report.layout.kept == [1, 4]  # trunk 1..4 (n = 4): round(i * 3 / 1) = 0, 3
    full = tiny.model_class.from_pretrained(str(tiny.path))
    emulator = tiny.model_class.from_pretrained(str(tmp_path / "emu"))  # plain transformers loads it
    family_ = family_for(full.config)
    full_blocks, emu_blocks = family_.blocks(full), family_.blocks(emulator)
    assert len(emu_blocks) == 4
    for emu_index, full_index in enumerate([0, 1, 4, 5]):
        expected = full_blocks[full_index].state_dict()
        for name, tensor in emu_blocks[emu_index].state_dict().items():
            assert torch.equal(tensor, expected[name]), (emu_index, name)
    full_state, block_prefix = full.state_dict(), family_.blocks_path + "."
    outside = {k: v for k, v in emulator.state_dict().items() if not k.startswith(block_prefix)}
    assert outside and all(torch.equal(v, full_state[k]) for k, v in outside.items())  # embeddings, head
    assert report.size.emulator_parameters < report.size.source_parameters
    assert len(_state(tmp_path / "emu")) < len(_state(tiny.path))


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_keeping_every_trunk_block_gives_the_full_models_outputs(six_layer, family, tmp_path) -> None:
    tiny = six_layer[family]
    build_emulator(tiny.path, tmp_path / "emu", device_layers=2, head_layers=1, keep=3)
    batch = {k: v for k, v in make_batch(family, torch.Generator().manual_seed(1)).items() if k != "labels"}
    with torch.no_grad():
        full = tiny.model_class.from_pretrained(str(tiny.path)).eval()(**batch).logits
        emu = tiny.model_class.from_pretrained(str(tmp_path / "emu")).eval()(**batch).logits
    assert torch.equal(full, emu)


def test_distillation_lowers_the_normalized_mse_and_is_saved(six_layer, tmp_path) -> None:
    tiny = six_layer["llama"]
    generator = torch.Generator().manual_seed(3)
    train = [make_batch("llama", generator) for _ in range(4)]
    heldout = [make_batch("llama", generator) for _ in range(2)]
    report = build_emulator(
        tiny.path, tmp_path / "emu", device_layers=1, head_layers=1, keep=1,
        distill_config=DistillConfig(steps=30, lr=3e-3), train=train, heldout=heldout,
    )  # fmt: skip
    stats = report.distillation
    assert stats["heldout_normalized_mse_after"] < 0.5 * stats["heldout_normalized_mse_before"]
    # The trained blocks reached the files: the reloaded emulator is as far from the full model as reported.
    full = tiny.model_class.from_pretrained(str(tiny.path))
    emulator = tiny.model_class.from_pretrained(str(tmp_path / "emu"))
    layout = EmulatorLayout.load(tmp_path / "emu")
    assert layout.distillation == stats
    reloaded = evaluate_distance(full, emulator, family_for(full.config), layout, heldout)
    assert reloaded == pytest.approx(stats["heldout_normalized_mse_after"], rel=1e-3, abs=1e-6)
    undistilled = build_emulator(tiny.path, tmp_path / "plain", device_layers=1, head_layers=1, keep=1)
    plain = tiny.model_class.from_pretrained(str(undistilled.out))
    before = evaluate_distance(full, plain, family_for(full.config), layout, heldout)
    assert before == pytest.approx(stats["heldout_normalized_mse_before"], rel=1e-3, abs=1e-6)


def test_cli_builds_and_distils_on_a_text_file(six_layer, tmp_path, capsys) -> None:
    data = tmp_path / "data.txt"
    data.write_text("\n".join(f"line {i} of some text to distil on" for i in range(12)) + "\n\n")
    out = tmp_path / "emu"
    argv = ["emulator", "build", "--model-dir", str(six_layer["gpt2"].path), "--out", str(out), "--keep", "2",
            "--device-layers", "1", "--head-layers", "1", "--distill-steps", "3", "--data", str(data),
            "--batch-size", "4"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["kept_trunk_blocks"] == [1, 4] and report["emulator_layers"] == 4
    assert report["distillation"]["steps"] == 3 and report["distillation"]["heldout_batches"] == 1
    assert report["size"]["emulator_parameters"] < report["size"]["source_parameters"]
    assert (out / "splitft_emulator.json").is_file() and (out / "config.json").is_file()


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        (
            ["--keep", "5", "--device-layers", "1", "--head-layers", "1"],
            "keep must be between 1 and the trunk's 4",
        ),
        (["--keep", "0", "--device-layers", "1"], "keep must be between 1 and the trunk's 5 blocks, got 0"),
        (
            ["--keep", "1", "--device-layers", "4", "--head-layers", "2"],
            "must leave at least one trunk block",
        ),
        (["--keep", "1", "--device-layers", "0"], "device_layers must be >= 1"),
        (["--keep", "1", "--device-layers", "1", "--data", "x.txt"], "--data is for distillation"),
        (
            ["--keep", "1", "--device-layers", "1", "--distill-steps", "-1"],
            "distill steps must be an int >= 0",
        ),
        (
            ["--keep", "1", "--device-layers", "1", "--distill-steps", "2", "--data", "/no/file"],
            "no such file",
        ),
    ],
)
def test_cli_refusals_exit_2_and_write_nothing(six_layer, tmp_path, capsys, extra, reason) -> None:
    out = tmp_path / "emu"
    argv = ["emulator", "build", "--model-dir", str(six_layer["llama"].path), "--out", str(out), *extra]
    assert main(argv) == 2
    assert reason in _stderr(capsys)
    assert not out.exists()


def test_cli_refuses_a_missing_model_and_a_non_empty_out(six_layer, tmp_path, capsys) -> None:
    base = ["emulator", "build", "--keep", "1", "--device-layers", "1"]
    assert main([*base, "--model-dir", str(tmp_path / "none"), "--out", str(tmp_path / "e")]) == 2
    assert "is not a model directory" in _stderr(capsys)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    assert main([*base, "--model-dir", str(six_layer["llama"].path), "--out", str(tmp_path / "full")]) == 2
    assert "exists and is not empty" in _stderr(capsys)
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"


def test_cli_usage_error_exits_2(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["emulator", "build", "--model-dir", "m", "--out", "o", "--keep", "two", "--device-layers", "1"])
    assert exc.value.code == 2
    assert "invalid int value: 'two'" in capsys.readouterr().err
