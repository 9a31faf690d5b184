"""TinyTrain: Fisher potentials by hand, cost model, greedy selection under both budgets."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from splitft.errors import InvalidArgument
from splitft.methods import (
    LayerCost,
    TinyTrainConfig,
    apply_masks,
    find_target_modules,
    fisher_pass,
    fisher_potentials,
    layer_costs,
    select_tinytrain,
    selection_cost,
    tinytrain_masks,
)
from splitft.testing.tiny import _build, make_batch

# Two samples, two tokens, two channels; the layer is the identity, so its output a == x.
X = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [2.0, -1.0]]])
# The loss is sum(a * G), so the gradient with respect to the output is exactly G.
G = torch.tensor([[[1.0, 0.0], [1.0, 1.0]], [[2.0, 2.0], [1.0, 1.0]]])
# sum_t a*g per sample: n=0 -> (1+3, 0+4) = (4, 4); n=1 -> (0+2, 2-1) = (2, 1)
# D = 1/(2N) sum_n (.)^2 with N=2: c0 = (16+4)/4 = 5, c1 = (16+1)/4 = 4.25
EXPECTED = torch.tensor([5.0, 4.25])


class Identity(nn.Module):
    """`lin` is the identity; the batch carries the gradient the loss should give its output."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.lin.weight.copy_(torch.eye(2))

    def forward(self, x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


def _toy_loss(output: torch.Tensor, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return (output * batch[1]).sum()  # d loss / d output == batch[1]


def _model(family: str = "llama") -> nn.Module:
    torch.manual_seed(0)
    return _build(family, 2, 32)


def _batches(family: str = "llama") -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(5)
    return [make_batch(family, generator) for _ in range(2)]


def test_potentials_match_hand_computation() -> None:
    toy = Identity().requires_grad_(False)
    potentials = fisher_potentials(toy, [(X, G)], _toy_loss, ["lin"])
    torch.testing.assert_close(potentials["lin"], EXPECTED)
    # one sample per batch: the same N=2 samples, the same potentials
    split = fisher_potentials(toy, [(X[:1], G[:1]), (X[1:], G[1:])], _toy_loss, ["lin"])
    torch.testing.assert_close(split["lin"], EXPECTED)
    assert toy.lin.weight.grad is None  # gradients were taken only with respect to layer outputs


def test_fisher_pass_measures_tokens_and_forward_order() -> None:
    model = _model()
    names = find_target_modules(model)
    measured = fisher_pass(model, _batches(), None, list(reversed(names)))
    assert measured.order == names  # the forward order, whatever order the names came in
    assert set(measured.tokens.values()) == {4 * 12}  # batch 4 x 12 tokens
    assert all(
        p.shape == (linear_out(model, n),) and bool((p >= 0).all()) for n, p in measured.potentials.items()
    )


def linear_out(model: nn.Module, name: str) -> int:
    return model.get_submodule(name).out_features


def test_cost_model_by_hand() -> None:
    costs = {
        "a": LayerCost(4, 3, 5, saved_after=500, largest_saved=60, input_id=0),
        "b": LayerCost(2, 4, 5, saved_after=200, largest_saved=10, input_id=1),
    }
    # own memory: the rows' gradient and AdamW's two moments, plus the layer's input
    assert costs["a"].memory_bytes(2, 4) == 4 * (3 * 2 * 3 + 5 * 3)
    assert costs["a"].weight_grad_macs(2) == 2 * 3 * 5
    # training only "b" (the later layer): its state, input and rows' product (index_add keeps it), the
    # activations saved from its input on, the larger of their largest tensor and its row block; no
    # input gradients
    assert selection_cost(costs, {"b": 1}, 4) == (
        4 * (3 * 1 * 4 + 5 * 4 + 5 * 1) + 200 + max(10, 4 * 4),
        1 * 4 * 5,
    )
    # training "a" means backward must run through "b" too: + out*in*T of b, and a's activations
    assert selection_cost(costs, {"a": 4}, 2) == (
        2 * (3 * 4 * 3 + 5 * 3 + 5 * 4) + 500 + max(60, 2 * 4 * 3),
        4 * 3 * 5 + 2 * 4 * 5,
    )
    # two layers reading one input save it once
    shared = {"q": LayerCost(2, 3, 5, input_id=0), "k": LayerCost(2, 3, 5, input_id=0)}
    assert selection_cost(shared, {"q": 2, "k": 2}, 1)[0] == 2 * 3 * 2 * 3 + 5 * 3 + 2 * 5 * 2 + 2 * 3
    assert selection_cost(costs, {}, 4) == (0, 0)


def test_greedy_takes_the_largest_ratio_that_fits() -> None:
    costs = {"early": LayerCost(8, 4, 1), "late": LayerCost(8, 4, 1)}
    potentials = {"early": torch.arange(8.0), "late": torch.full((8,), 100.0)}
    # late alone at ratio 1: 3*8*4 + 1*4 + 1*8 (state, input, rows' product) = 108 (+ its row block 32,
    # the transient); adding early at 1/4 (2 rows): 3*2*4 + 4 + 2 = 30 more (the transient stays 32)
    config = TinyTrainConfig(memory_budget_bytes=140 + 32, compute_budget_macs=math.inf, bytes_per_element=1)
    selection = select_tinytrain(potentials, costs, config)
    assert selection.ratios == {"early": 0.25, "late": 1.0}
    assert selection.channels["early"] == [7, 6]  # its top channels by potential
    assert selection.memory_bytes == 170
    assert torch.equal(selection.masks["early"].any(dim=1), torch.arange(8) >= 6)


def test_unlimited_budget_selects_everything() -> None:
    model = _model("gpt2")
    config = TinyTrainConfig(memory_budget_bytes=math.inf, compute_budget_macs=math.inf)
    selection = tinytrain_masks(model, _batches("gpt2"), config)
    names = find_target_modules(model)
    assert list(selection.masks) == names
    assert set(selection.ratios.values()) == {1.0}
    assert all(bool(mask.all()) for mask in selection.masks.values())


def test_selection_never_exceeds_either_budget() -> None:
    model = _model()
    names = find_target_modules(model)
    measured = fisher_pass(model, _batches(), None, names)
    costs = layer_costs(model, measured)
    full_memory, full_macs = selection_cost(costs, {n: c.out_features for n, c in costs.items()}, 4)
    picked_some = False
    for memory_share, macs_share in itertools.product((0.02, 0.1, 0.3, 0.7), (0.02, 0.1, 0.4, 0.9)):
        config = TinyTrainConfig(
            memory_budget_bytes=memory_share * full_memory, compute_budget_macs=macs_share * full_macs
        )
        selection = select_tinytrain(measured.potentials, costs, config)
        counts = {n: len(c) for n, c in selection.channels.items()}
        assert (selection.memory_bytes, selection.macs) == selection_cost(costs, counts, 4)
        assert selection.memory_bytes <= config.memory_budget_bytes
        assert selection.macs <= config.compute_budget_macs
        assert all(selection.ratios[n] in config.channel_ratios for n in selection.masks)
        for name, mask in selection.masks.items():
            assert int(mask.any(dim=1).sum()) == counts[name] and torch.equal(
                mask.any(dim=1), mask.all(dim=1)
            )
        picked_some = picked_some or bool(selection.masks)
    assert picked_some


def test_gradients_are_zero_outside_selected_channels() -> None:
    model = _model()
    batches = _batches()
    config = TinyTrainConfig(memory_budget_bytes=200_000, compute_budget_macs=2e6, channel_ratios=(0.5, 0.25))
    selection = tinytrain_masks(model, batches, config)
    assert selection.masks
    wrapped = apply_masks(model, selection.masks)
    model(**batches[0]).loss.backward()
    for name, module in wrapped.items():
        assert module.rows_only
        dense = torch.zeros(module.out_features, module.in_features)
        dense[module.delta_rows] = module.delta_values.grad
        mask = selection.masks[name]
        assert bool((dense[~mask] == 0).all())
        assert bool((dense[mask] != 0).any()), name
        assert module.base.weight.grad is None
    assert all(p.grad is None for n, p in model.named_parameters() if not n.endswith("delta_values"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"memory_budget_bytes": 0}, "memory_budget_bytes must be a positive number"),
        ({"compute_budget_macs": float("nan")}, "compute_budget_macs must be a positive number"),
        ({"channel_ratios": ()}, "must not be empty"),
        ({"channel_ratios": (1.0, 1.5)}, r"in \(0, 1\]"),
        ({"channel_ratios": (0.5, 0.5)}, "distinct"),
        ({"bytes_per_element": 0}, "bytes_per_element must be a positive integer"),
        ({"tokens_per_step": 2.5}, "tokens_per_step must be a positive integer"),
        ({"target_modules": "q_proj"}, "target_modules"),
    ],
)
def test_config_validation(kwargs: dict, message: str) -> None:
    fields = {"memory_budget_bytes": 1e6, "compute_budget_macs": 1e9, **kwargs}
    with pytest.raises(ValueError, match=message):
        TinyTrainConfig(**fields)


def test_ratios_are_tried_largest_first() -> None:
    config = TinyTrainConfig(1.0, 1.0, channel_ratios=(0.25, 1, 0.5))
    assert config.channel_ratios == (1.0, 0.5, 0.25)


def test_missing_loss_is_a_clear_error() -> None:
    batch = {k: v for k, v in _batches()[0].items() if k != "labels"}
    with pytest.raises(InvalidArgument, match="scalar loss"):
        fisher_potentials(_model(), [batch], None, ["model.layers.0.mlp.up_proj"])
