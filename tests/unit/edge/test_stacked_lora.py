"""The stacked LoRA path of a shared pass (`edge_server.stacked_lora`) against each session's own
peft layer: the same deltas, and the same gradients for the inputs and for every session's A and B,
checked with real peft LoRA layers of different weights and scalings (float64, so that any
difference is an error in the formulas, not rounding)."""

from __future__ import annotations

import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from edge_server.batched_trunk import PassPlan, Segment
from edge_server.stacked_lora import _StackedLora, stacked_delta

IN, OUT, RANK, TOKENS = 12, 10, 3, 5


def _lora_layer(seed: int, alpha: int) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential()
    model.add_module("proj", nn.Linear(IN, OUT).double())
    peft_model = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=alpha, target_modules=["proj"]))
    layer = peft_model.base_model.model.proj
    with torch.no_grad():  # lora_B starts at zero: give it values so every gradient is non-trivial
        layer.lora_B["default"].weight.normal_()
    return layer


def test_stacked_deltas_and_gradients_equal_each_sessions_own_lora_path() -> None:
    layers = [_lora_layer(seed, alpha) for seed, alpha in ((1, 3), (2, 6), (3, 12))]
    rows = 2
    plan = PassPlan(
        segments=[
            Segment(i * rows, (i + 1) * rows, {"proj": layer}, torch.Generator())
            for i, layer in enumerate(layers)
        ],
        targeted=frozenset({"proj"}),
    )
    x = torch.randn(rows * len(layers), TOKENS, IN, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(rows * len(layers), TOKENS, OUT, dtype=torch.float64)
    delta = stacked_delta("proj", x, plan)
    assert delta is not None
    params = [p for layer in layers for p in (layer.lora_A["default"].weight, layer.lora_B["default"].weight)]
    got = torch.autograd.grad(delta, [x, *params], grad)

    x_ref = x.detach().clone().requires_grad_(True)
    expected_delta = torch.cat(
        [
            layer.lora_B["default"](layer.lora_A["default"](x_ref[i * rows : (i + 1) * rows]))
            * layer.scaling["default"]
            for i, layer in enumerate(layers)
        ]
    )
    expected = torch.autograd.grad(expected_delta, [x_ref, *params], grad)
    torch.testing.assert_close(delta, expected_delta, rtol=1e-12, atol=1e-12)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)


def test_the_stacked_product_passes_gradcheck() -> None:
    generator = torch.Generator().manual_seed(0)
    sessions = 3
    inputs = torch.randn(sessions, TOKENS, IN, dtype=torch.float64, generator=generator, requires_grad=True)
    scales = torch.tensor([0.5, 2.0, 4.0], dtype=torch.float64).view(-1, 1, 1)
    a = [
        torch.randn(RANK, IN, dtype=torch.float64, generator=generator, requires_grad=True)
        for _ in range(sessions)
    ]
    b = [
        torch.randn(OUT, RANK, dtype=torch.float64, generator=generator, requires_grad=True)
        for _ in range(sessions)
    ]
    assert torch.autograd.gradcheck(lambda i, *w: _StackedLora.apply(i, scales, *w), (inputs, *a, *b))
