"""aggregate_adapter_files on real peft adapters of a tiny BERT: the written adapter loads in peft and
holds the weighted mean; adapters that disagree are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model, get_peft_model_state_dict
from safetensors.torch import load_file, save_file
from transformers import BertForSequenceClassification

from splitft.errors import InvalidArgument
from splitft.federated import Channel, aggregate_adapter_files
from splitft.federated.shared_trunk import TrunkMarks, read_trunk_marks, trunk_marks
from splitft.testing.tiny import lora_config_for, save_tiny_model


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model("bert", tmp_path_factory.mktemp("bert"), layers=2, hidden=32).path


def _adapter(base: Path, out: Path, seed: int, r: int = 4) -> Path:
    """A peft adapter with every LoRA weight random (B too, which peft initializes to zero)."""
    model = get_peft_model(BertForSequenceClassification.from_pretrained(base), lora_config_for("bert", r=r))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
    model.save_pretrained(out)
    return out


def test_fedavg_of_adapters_loads_in_peft(base: Path, tmp_path: Path) -> None:
    paths = [_adapter(base, tmp_path / f"device{k}", seed=k) for k in range(3)]
    weights = [10, 30, 60]
    result = aggregate_adapter_files(paths, weights, tmp_path / "global")
    assert result.participants == (0, 1, 2) and result.relative_error == 0.0
    states = [load_file(str(p / "adapter_model.safetensors")) for p in paths]
    merged = load_file(str(tmp_path / "global" / "adapter_model.safetensors"))
    assert set(merged) == set(states[0])
    for key, value in merged.items():
        expected = sum(w * s[key] for w, s in zip(weights, states, strict=True)) / 100
        torch.testing.assert_close(value, expected, atol=1e-6, rtol=1e-6)
        assert value.dtype == torch.float32
    model = PeftModel.from_pretrained(
        BertForSequenceClassification.from_pretrained(base), tmp_path / "global"
    )
    loaded = get_peft_model_state_dict(model)
    assert set(loaded) == set(merged)
    assert all(torch.equal(loaded[key], merged[key]) for key in merged)


def test_aircomp_of_adapters_reports_its_error(base: Path, tmp_path: Path) -> None:
    paths = [_adapter(base, tmp_path / f"device{k}", seed=k) for k in range(3)]
    channel = Channel(snr_db=20.0, fading="rayleigh", truncation=0.0)
    result = aggregate_adapter_files(
        paths, [1, 1, 1], tmp_path / "global", method="aircomp", channel=channel, seed=0
    )
    assert result.participants == (0, 1, 2) and 0 < result.relative_error < 1
    config = json.loads((tmp_path / "global" / "adapter_config.json").read_text())
    assert config == json.loads((paths[0] / "adapter_config.json").read_text())


def test_disagreeing_or_missing_adapters_are_refused(base: Path, tmp_path: Path) -> None:
    first = _adapter(base, tmp_path / "a", seed=0)
    other_rank = _adapter(base, tmp_path / "b", seed=1, r=8)
    with pytest.raises(InvalidArgument, match=r"adapters disagree on r: .*a has 4, .*b has 8"):
        aggregate_adapter_files([first, other_rank], [1, 1], tmp_path / "out")
    with pytest.raises(InvalidArgument, match=r"adapter directory .*nowhere has no adapter_config.json"):
        aggregate_adapter_files([first, tmp_path / "nowhere"], [1, 1], tmp_path / "out")
    with pytest.raises(InvalidArgument, match="out_path .* is one of the input adapters"):
        aggregate_adapter_files([first], [1], first)
    with pytest.raises(InvalidArgument, match="method must be one of fedavg, aircomp, got 'median'"):
        aggregate_adapter_files([first], [1], tmp_path / "out", method="median")
    with pytest.raises(InvalidArgument, match="method 'aircomp' needs a channel"):
        aggregate_adapter_files([first], [1], tmp_path / "out", method="aircomp")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "adapter_config.json").write_text((first / "adapter_config.json").read_text())
    (tmp_path / "c" / "adapter_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(
        InvalidArgument, match=r"adapter_model.safetensors cannot be read with safetensors.numpy"
    ):
        aggregate_adapter_files([first, tmp_path / "c"], [1, 1], tmp_path / "out")


def _mark(path: Path, trunk_keys: list[str], steps: int) -> Path:
    """Mark a saved adapter's `trunk_keys` as an export of a shared trunk adapter with `steps` steps."""
    weights = path / "adapter_model.safetensors"
    save_file(
        load_file(str(weights)),
        str(weights),
        metadata={"format": "pt", **trunk_marks(trunk_keys, steps, "j/r0")},
    )
    return path


def test_a_shared_trunk_comes_from_the_latest_export_and_the_rest_is_averaged(
    base: Path, tmp_path: Path
) -> None:
    paths = [_adapter(base, tmp_path / f"device{k}", seed=k) for k in range(3)]
    states = [load_file(str(p / "adapter_model.safetensors")) for p in paths]
    trunk = sorted(k for k in states[0] if ".layer.1." in k)  # block 1 is the trunk
    assert trunk and len(trunk) < len(states[0])
    for path, steps in zip(paths, (5, 12, 7), strict=True):
        _mark(path, trunk, steps)
    assert read_trunk_marks(paths[1] / "adapter_model.safetensors") == TrunkMarks(
        frozenset(trunk), 12, "j/r0"
    )
    result = aggregate_adapter_files(paths, [1, 1, 2], tmp_path / "global", trunk="shared")
    merged = load_file(str(result.out_path / "adapter_model.safetensors"))
    for key, value in merged.items():
        if key in trunk:
            assert torch.equal(value, states[1][key]), key  # the export of 12 steps, as it was
        else:
            torch.testing.assert_close(value, (states[0][key] + states[1][key] + 2 * states[2][key]) / 4)
    unmarked = [_adapter(base, tmp_path / f"plain{k}", seed=k) for k in range(2)]
    whole = aggregate_adapter_files(unmarked, [1, 1], tmp_path / "whole", trunk="shared")  # nobody shared
    assert whole.participants == (0, 1)
    with pytest.raises(InvalidArgument, match="trunk must be one of averaged, shared"):
        aggregate_adapter_files(paths, [1, 1, 1], tmp_path / "x", trunk="pooled")
    _mark(paths[2], trunk[:-1], 3)
    with pytest.raises(InvalidArgument, match="uploads 2 and 1 disagree on the shared trunk adapter's keys"):
        aggregate_adapter_files(paths, [1, 1, 1], tmp_path / "y", trunk="shared")


def _shifted(start: Path, out: Path, seed: int, size: float) -> Path:
    """`start`'s adapter plus a random update of about `size` per entry (a device's local training)."""
    out.mkdir()
    (out / "adapter_config.json").write_text((start / "adapter_config.json").read_text())
    generator = torch.Generator().manual_seed(seed)
    state = load_file(str(start / "adapter_model.safetensors"))
    moved = {k: v + size * torch.randn(v.shape, generator=generator) for k, v in state.items()}
    save_file(moved, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    return out


def test_aircomp_with_a_reference_sends_updates_and_costs_far_less(base: Path, tmp_path: Path) -> None:
    """Adapters = a large common start (the round's global adapter) + small updates: over the air
    without a reference the noise scales with the whole weights; with it, with the updates."""
    start = _adapter(base, tmp_path / "start", seed=99)
    paths = [_shifted(start, tmp_path / f"device{k}", seed=k, size=0.01) for k in range(4)]
    weights = [3, 1, 2, 2]
    channel = Channel(snr_db=20.0, fading="rayleigh", truncation=0.0)
    kwargs = dict(method="aircomp", channel=channel, seed=1)
    whole = aggregate_adapter_files(paths, weights, tmp_path / "whole", **kwargs)  # type: ignore[arg-type]
    updates = aggregate_adapter_files(paths, weights, tmp_path / "updates", reference=start, **kwargs)  # type: ignore[arg-type]
    assert whole.relative_error > 0.01
    assert updates.relative_error < whole.relative_error / 20
    exact = aggregate_adapter_files(paths, weights, tmp_path / "fedavg")
    expected = load_file(str(exact.out_path / "adapter_model.safetensors"))
    got = load_file(str(updates.out_path / "adapter_model.safetensors"))
    assert all(got[k].dtype == torch.float32 and got[k].shape == expected[k].shape for k in expected)
    # no noise, no fading: start + the mean update is FedAvg
    clean = Channel(snr_db=None, fading="none")
    noiseless = aggregate_adapter_files(
        paths, weights, tmp_path / "clean", method="aircomp", channel=clean, seed=1, reference=start
    )
    clean_state = load_file(str(noiseless.out_path / "adapter_model.safetensors"))
    for key, value in expected.items():
        torch.testing.assert_close(clean_state[key], value, atol=1e-6, rtol=0)


def test_a_reference_of_another_layout_is_refused(base: Path, tmp_path: Path) -> None:
    paths = [_adapter(base, tmp_path / f"device{k}", seed=k) for k in range(2)]
    other = _adapter(base, tmp_path / "other", seed=5, r=8)
    channel = Channel(snr_db=20.0, fading="none")
    with pytest.raises(
        InvalidArgument, match=r"the reference adapter's .* has shape \[8, .*the uploads' \[4, "
    ):
        aggregate_adapter_files(
            paths, [1, 1], tmp_path / "out", method="aircomp", channel=channel, reference=other
        )
    with pytest.raises(InvalidArgument, match=r"adapter directory .*nowhere has no adapter_config.json"):
        aggregate_adapter_files(
            paths, [1, 1], tmp_path / "out", method="aircomp", channel=channel, reference=tmp_path / "nowhere"
        )
