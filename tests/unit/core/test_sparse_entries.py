"""The entries layout computes its delta sparsely: the same training as the old dense formulation
(kept here as the reference), and no weight-sized tensor saved for backward or built at all."""

from __future__ import annotations

from typing import Any, cast

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D

from splitft.methods import SparseDeltaLinear, TaskEdgeConfig, apply_masks, taskedge_masks
from splitft.methods.common import linear_weight
from splitft.methods.sparse import sparse_modules
from splitft.testing.tiny import TinyModel, make_batch

STEPS = 5


class DenseReference(SparseDeltaLinear):
    """The entries layout as it was until 2026-11: `x @ (W + dense delta)^T`, one matmul (the
    reference for equivalence, and proof that the saved-tensor checks below can fail)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = linear_weight(self.base) + self.dense_delta()
        return F.linear(x, weight, cast("torch.Tensor | None", self.base.bias))


def _as_reference(model: nn.Module) -> None:
    for module in sparse_modules(model).values():
        assert not module.rows_only
        module.__class__ = DenseReference


def _same_count_per_row(module: SparseDeltaLinear) -> bool:
    return len(module.mask().sum(dim=1).unique()) == 1


def _mixed_masks(model: nn.Module, batches: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """TaskEdge's k-per-row masks, plus one entry more in every other row (the general path)."""
    masks = taskedge_masks(model, batches, TaskEdgeConfig(budget_fraction=0.01))
    for i, mask in enumerate(masks.values()):
        if i % 2:
            mask[::2, -1] = True
    return masks


def _train(model: nn.Module, batches: list[dict[str, Any]]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Losses and, per step, the gradient reaching the input embeddings (the edge's input grad)."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    embeddings = cast(PreTrainedModel, model).get_input_embeddings()
    losses, input_grads = [], []
    model.train()
    for step in range(STEPS):
        batch = batches[step % len(batches)]
        embedded = embeddings(batch["input_ids"]).detach().requires_grad_(True)
        rest = {k: v for k, v in batch.items() if k != "input_ids"}
        loss = model(inputs_embeds=embedded, **rest).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.detach())
        input_grads.append(cast(torch.Tensor, embedded.grad))
    return losses, input_grads


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_sparse_training_equals_the_dense_formulation(family: str, tiny_models: dict[str, TinyModel]) -> None:
    tiny = tiny_models[family]
    generator = torch.Generator().manual_seed(5)
    batches = [make_batch(family, generator) for _ in range(2)]
    models = [tiny.model_class.from_pretrained(str(tiny.path)) for _ in range(2)]
    masks = _mixed_masks(models[0], batches)
    for model in models:
        apply_masks(model, {n: m.clone() for n, m in masks.items()})
    uniform = [_same_count_per_row(m) for m in sparse_modules(models[0]).values()]
    assert any(uniform) and not all(uniform)  # TaskEdge's k per row, and any other mask
    _as_reference(models[1])
    (sparse_losses, sparse_grads), (dense_losses, dense_grads) = (_train(m, batches) for m in models)
    for got, want in zip(sparse_losses + sparse_grads, dense_losses + dense_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    deltas = [{n: m.delta_values.detach() for n, m in sparse_modules(x).items()} for x in models]
    assert deltas[0].keys() == deltas[1].keys()
    for name in deltas[0]:
        assert bool(deltas[0][name].abs().max() > 0), name  # training moved the deltas
        torch.testing.assert_close(deltas[0][name], deltas[1][name], atol=1e-6, rtol=0)


def _module(kind: str, uniform: bool) -> SparseDeltaLinear:
    """A [20, 24] weight: its 480 entries are no other tensor's size in the runs below."""
    torch.manual_seed(0)
    base = nn.Linear(24, 20) if kind == "linear" else Conv1D(20, 24)
    scores = torch.rand(20, 24)
    mask = scores >= scores.topk(2, dim=1).values[:, -1:]  # two per row
    if not uniform:
        mask[::3, :3] = True
    module = SparseDeltaLinear(base, mask)
    assert _same_count_per_row(module) == uniform and module.nnz > module.out_features  # 2+ chunks
    with torch.no_grad():
        module.delta_values.normal_()
    return module


def _saved_during_forward(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    saved: list[torch.Tensor] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = module(x)
    return out, saved


def _weight_sized_copies(module: SparseDeltaLinear, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Tensors of the weight's size that are not the frozen base weight itself (which autograd may
    keep for the input gradient: a reference to the shared trunk weight, not a copy)."""
    weight = cast(torch.Tensor, module.base.weight)
    size = module.out_features * module.in_features
    own = weight.untyped_storage().data_ptr()
    return [t for t in tensors if t.numel() == size and t.untyped_storage().data_ptr() != own]


@pytest.mark.parametrize("uniform", [True, False])
@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_no_saved_tensor_has_the_weights_size(kind: str, uniform: bool) -> None:
    module = _module(kind, uniform)
    x = torch.randn(2, 3, 24, requires_grad=True)  # the edge's trunk input always requires grad
    _, saved = _saved_during_forward(module, x)
    assert saved and _weight_sized_copies(module, saved) == []
    kept = {t.untyped_storage().data_ptr() for t in saved}
    allowed = {p.untyped_storage().data_ptr() for p in [*module.parameters(), *module.buffers(), x]}
    assert kept <= allowed  # only the input, the parameter and the index buffer: nothing new
    module.__class__ = DenseReference  # the check can fail: the old formulation kept W + delta
    _, saved = _saved_during_forward(module, x)
    assert len(_weight_sized_copies(module, saved)) == 1


class _WeightSizedOutputs(TorchDispatchMode):
    """Records every op that produced a tensor of `size` elements."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size, self.ops = size, cast(list[str], [])

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        results = out if isinstance(out, (tuple, list)) else [out]
        if any(isinstance(t, torch.Tensor) and t.numel() == self.size for t in results):
            self.ops.append(str(func))
        return out


@pytest.mark.parametrize("uniform", [True, False])
@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_forward_and_backward_build_no_weight_sized_tensor(kind: str, uniform: bool) -> None:
    module = _module(kind, uniform)
    x = torch.randn(2, 3, 24, requires_grad=True)
    weight_ops = {"aten.t.default", "aten.transpose.int", "aten.detach.default"}  # views of W itself
    with _WeightSizedOutputs(module.out_features * module.in_features) as seen:
        module(x).square().sum().backward()
    assert set(seen.ops) <= weight_ops, seen.ops
    assert x.grad is not None and module.delta_values.grad is not None
    module.__class__ = DenseReference  # and the check can fail: the dense delta and its gradient
    with _WeightSizedOutputs(module.out_features * module.in_features) as seen:
        module(x).square().sum().backward()
    assert not set(seen.ops) <= weight_ops


@pytest.mark.parametrize("uniform", [True, False])
def test_gradients_match_autograd_through_the_dense_delta(uniform: bool) -> None:
    module = _module("linear", uniform)
    x = torch.randn(4, 24, dtype=torch.float64, requires_grad=True)
    module.double()
    torch.autograd.gradcheck(lambda v, inp: _product(module, v, inp), (module.delta_values, x))


def _product(module: SparseDeltaLinear, values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    from splitft.methods.sparse_entries import sparse_entries_product

    shape = (module.out_features, module.in_features)
    return sparse_entries_product(x, values, cast(torch.Tensor, module.delta_indices), shape)
