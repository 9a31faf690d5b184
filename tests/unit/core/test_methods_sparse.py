"""Sparse deltas: only masked entries move, O(nnz) optimizer state, frozen base, save/load/merge."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D

from splitft.errors import InvalidArgument
from splitft.methods import (
    SparseDeltaLinear,
    TaskEdgeConfig,
    apply_masks,
    load_sparse_deltas,
    merge_sparse_deltas,
    save_sparse_deltas,
    sparse_modules,
    sparse_state_dict,
    taskedge_masks,
)
from splitft.methods.common import linear_weight
from splitft.testing.tiny import TinyModel, make_batch

STEPS = 4


def _load(tiny: TinyModel) -> PreTrainedModel:
    return tiny.model_class.from_pretrained(str(tiny.path))


def _row_masks(model: nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    masks = {}
    for i, name in enumerate(names):
        weight = linear_weight(model.get_submodule(name))
        mask = torch.zeros(weight.shape, dtype=torch.bool)
        mask[i % 3 :: 3] = True  # every third output channel
        masks[name] = mask
    return masks


def _masks(model: nn.Module, family: str, layout: str, batches: list) -> dict[str, torch.Tensor]:
    entries = taskedge_masks(model, batches, TaskEdgeConfig(budget_fraction=0.01))
    return entries if layout == "entries" else _row_masks(model, sorted(entries)[:4])


def _train(model: nn.Module, batches: list) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    model.train()
    for step in range(STEPS):
        loss = model(**batches[step % len(batches)]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return optimizer


@pytest.fixture(params=[("llama", "entries"), ("gpt2", "entries"), ("llama", "rows"), ("gpt2", "rows")])
def trained(request: pytest.FixtureRequest, tiny_models: dict[str, TinyModel]) -> dict:
    family, layout = request.param
    model = _load(tiny_models[family])
    generator = torch.Generator().manual_seed(3)
    batches = [make_batch(family, generator) for _ in range(2)]
    originals = {k: v.detach().clone() for k, v in model.state_dict().items()}
    masks = _masks(model, family, layout, batches)
    wrapped = apply_masks(model, masks)
    optimizer = _train(model, batches)
    return {
        "family": family, "layout": layout, "tiny": tiny_models[family], "model": model, "masks": masks,
        "wrapped": wrapped, "optimizer": optimizer, "originals": originals, "batch": batches[0],
    }  # fmt: skip


def _logits(model: nn.Module, batch: dict) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


def test_only_masked_entries_move_and_base_is_frozen(trained: dict) -> None:
    wrapped: dict[str, SparseDeltaLinear] = trained["wrapped"]
    assert all(m.rows_only == (trained["layout"] == "rows") for m in wrapped.values())
    if trained["family"] == "gpt2":
        assert all(isinstance(m.base, Conv1D) for m in wrapped.values())
    moved_inside = False
    for name, module in wrapped.items():
        base = module.base.weight
        assert torch.equal(base, trained["originals"][f"{name}.weight"])
        assert base.requires_grad is False
        effective = linear_weight(module.base) + module.dense_delta().detach()
        change = effective - linear_weight(module.base)
        mask = trained["masks"][name]
        assert torch.equal(module.mask(), mask)
        assert bool((change[~mask] == 0).all()), name
        moved_inside = moved_inside or bool((change[mask] != 0).any())
    assert moved_inside


def test_nothing_else_trains(trained: dict) -> None:
    model, wrapped = trained["model"], trained["wrapped"]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{name}.delta_values" for name in wrapped}
    for key, value in model.state_dict().items():
        original_key = key.replace(".base.", ".")
        if original_key in trained["originals"]:
            assert torch.equal(value, trained["originals"][original_key]), key


def test_optimizer_state_is_nnz_sized(trained: dict) -> None:
    optimizer: torch.optim.Optimizer = trained["optimizer"]
    nnz = {id(m.delta_values): m.nnz for m in trained["wrapped"].values()}
    assert len(optimizer.state) == len(nnz)
    for param, state in optimizer.state.items():
        assert param.numel() == nnz[id(param)] == int(trained["masks"][_name_of(trained, param)].sum())
        for key in ("exp_avg", "exp_avg_sq"):
            assert state[key].numel() == nnz[id(param)]


def _name_of(trained: dict, param: torch.Tensor) -> str:
    return next(n for n, m in trained["wrapped"].items() if m.delta_values is param)


def test_save_load_into_fresh_model_and_merge_reproduce_logits(trained: dict, tmp_path: Path) -> None:
    model, batch = trained["model"], trained["batch"]
    expected = _logits(model, batch)
    state = sparse_state_dict(model)
    for name, module in trained["wrapped"].items():
        indices = state[f"{name}.delta_indices"]
        assert indices.dtype == torch.int64 and indices.numel() == module.nnz
        assert torch.equal(indices, trained["masks"][name].flatten().nonzero().flatten())
    save_sparse_deltas(tmp_path, state, {"method": "taskedge", "family": trained["family"]})
    config = json.loads((tmp_path / "sparse_config.json").read_text())
    assert config["metadata"]["method"] == "taskedge"
    assert (tmp_path / "sparse_deltas.safetensors").is_file()

    fresh = _load(trained["tiny"])
    assert sorted(load_sparse_deltas(fresh, tmp_path)) == sorted(trained["wrapped"])
    torch.testing.assert_close(_logits(fresh, batch), expected, atol=1e-5, rtol=0)

    merge_sparse_deltas(model)
    assert not sparse_modules(model)
    assert all(isinstance(model.get_submodule(n), (nn.Linear, Conv1D)) for n in trained["wrapped"])
    torch.testing.assert_close(_logits(model, batch), expected, atol=1e-5, rtol=0)
    for name, module in trained["wrapped"].items():  # merging made new weights; the base is intact
        assert torch.equal(module.base.weight, trained["originals"][f"{name}.weight"])


def test_mask_validation() -> None:
    layer = nn.Linear(4, 3)
    with pytest.raises(InvalidArgument, match="shape"):
        SparseDeltaLinear(layer, torch.ones(4, 3, dtype=torch.bool))
    with pytest.raises(InvalidArgument, match="torch.bool"):
        SparseDeltaLinear(layer, torch.ones(3, 4))
    with pytest.raises(InvalidArgument, match="no entries"):
        SparseDeltaLinear(layer, torch.zeros(3, 4, dtype=torch.bool))
    holder = nn.Sequential(nn.LayerNorm(4))
    with pytest.raises(InvalidArgument, match="not nn.Linear"):
        apply_masks(holder, {"0": torch.ones(4, 4, dtype=torch.bool)})


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_delta_forward_equals_base_plus_dense_delta(kind: str) -> None:
    torch.manual_seed(0)
    base = nn.Linear(5, 3) if kind == "linear" else Conv1D(3, 5)
    mask = torch.rand(3, 5) < 0.4
    mask[0, 0] = True
    module = SparseDeltaLinear(base, mask)
    with torch.no_grad():
        module.delta_values.normal_()
    x = torch.randn(2, 4, 5)
    expected = base(x) + x @ module.dense_delta().T
    torch.testing.assert_close(module(x), expected)


def test_rejects_a_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "sparse_config.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(InvalidArgument, match="does not hold"):
        load_sparse_deltas(nn.Linear(2, 2), tmp_path)
    with pytest.raises(InvalidArgument, match="both"):
        save_sparse_deltas(tmp_path, {"a.delta_values": torch.zeros(2)}, {})
