"""Dropout routed only inside the modules that draw: the same masks as the whole-forward mode, the
global RNG untouched, far fewer calls through the mode, and nothing left active after an error."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from torch import nn
from torch.overrides import _get_current_function_mode_stack

from splitft.model.randomness import RowStream, RowStreams, SessionRandomness, seeded
from splitft.model.routing import RoutedRandomness, SessionDropout, route_randomness, session_dropout
from splitft.testing.tiny import FAMILY_NAMES, _build, lora_config_for, make_batch


def _tiny(family: str, attention: str = "sdpa") -> nn.Module:
    torch.manual_seed(0)
    model = _build(family, layers=2, hidden=32, dropout=0.2)
    model.set_attn_implementation(attention)
    config: LoraConfig = lora_config_for(family)
    config.lora_dropout = 0.3  # peft's LoRA dropout modules draw too
    peft_model = get_peft_model(model, config)
    peft_model.train()
    return peft_model


def _logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(**batch).logits


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_routed_masks_equal_the_whole_forward_mode_and_spare_the_global_rng(family, attention):
    model = _tiny(family, attention)
    batch = make_batch(family, torch.Generator().manual_seed(1))
    with SessionRandomness(RowStreams.single(seeded(5))):
        whole = _logits(model, batch)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    with RoutedRandomness(RowStreams.single(seeded(5)), model):
        routed = _logits(model, batch)
    assert torch.equal(torch.get_rng_state(), before), "a draw escaped to the global RNG"
    assert torch.equal(routed, whole)
    with RoutedRandomness(RowStreams.single(seeded(6)), model):
        other_seed = _logits(model, batch)
    assert not torch.equal(other_seed, routed), "dropout was not active"


def test_row_ranges_of_a_batch_draw_what_each_session_draws_alone():
    model = _tiny("bert")
    batch = make_batch("bert", torch.Generator().manual_seed(2), batch=5)
    streams = RowStreams([RowStream(0, 2, seeded(7)), RowStream(2, 5, seeded(8))])
    with RoutedRandomness(streams, model):
        both = _logits(model, batch)
    first, second = ({k: v[rows] for k, v in batch.items()} for rows in (slice(0, 2), slice(2, 5)))
    with RoutedRandomness(RowStreams.single(seeded(7)), model):
        alone_first = _logits(model, first)
    with RoutedRandomness(RowStreams.single(seeded(8)), model):
        alone_second = _logits(model, second)
    assert torch.allclose(both, torch.cat([alone_first, alone_second]), atol=1e-6)


class _Counting(SessionRandomness):
    calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        type(self).calls += 1
        return super().__torch_function__(func, types, args, kwargs)


def test_the_mode_sees_only_the_calls_inside_modules_that_draw(monkeypatch):
    model = _tiny("bert")
    batch = make_batch("bert", torch.Generator().manual_seed(3))
    with _Counting(RowStreams.single(seeded(1))):
        _logits(model, batch)
    whole, _Counting.calls = _Counting.calls, 0
    routed = RoutedRandomness(RowStreams.single(seeded(1)), model)
    routed.mode = _Counting(RowStreams.single(seeded(1)))
    with routed:
        _logits(model, batch)
    # The projections, norms, MLPs and LoRA paths run outside the mode: about a quarter remains.
    assert 0 < _Counting.calls < whole / 3, (_Counting.calls, whole)


def test_without_a_scope_a_routed_tree_draws_as_before():
    model = _tiny("gpt2")
    plain = copy.deepcopy(model)
    assert route_randomness(model) > 0
    batch = make_batch("gpt2", torch.Generator().manual_seed(4))
    torch.manual_seed(9)
    routed = _logits(model, batch)
    torch.manual_seed(9)
    assert torch.equal(routed, _logits(plain, batch))


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_pre_hooks) for m in model.modules())


def test_routing_is_idempotent_and_a_copy_routes_its_new_modules():
    model = _tiny("llama")
    before = _hooks(model)
    assert route_randomness(model) == 2  # the attention of each of the 2 blocks (LoRA dropouts: 8)
    once = _hooks(model)
    assert once > before
    assert sum(isinstance(m, SessionDropout) for m in model.modules()) == 8
    route_randomness(model)
    assert _hooks(model) == once
    twin = copy.deepcopy(model)  # keeps the hooks, but not the mark: its own modules are checked
    layer = twin.get_submodule("base_model.model.model.layers.0")
    layer.add_module("extra", nn.Dropout(0.5))
    with RoutedRandomness(RowStreams.single(seeded(1)), twin):
        pass
    assert isinstance(layer.extra, SessionDropout)


class _Attention(nn.Module):
    """Marked like Hugging Face attention modules; its projection fails after the mode is left."""

    def __init__(self, fail_in: str) -> None:
        super().__init__()
        self.is_causal = False
        self.attention_dropout = 0.5
        self.proj = nn.Linear(4, 4)
        self.fail_in = fail_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fail_in == "projection":
            self.proj.register_forward_hook(lambda *_: (_ for _ in ()).throw(ValueError("boom")))
        x = F.dropout(self.proj(x), self.attention_dropout, self.training)
        if self.fail_in == "attention":
            raise ValueError("boom")
        return x


@pytest.mark.parametrize("fail_in", ["attention", "projection"])
def test_an_error_inside_a_routed_module_leaves_the_mode(fail_in):
    model = _Attention(fail_in)
    with pytest.raises(ValueError, match="boom"), RoutedRandomness(RowStreams.single(seeded(1)), model):
        model(torch.ones(2, 4))
    assert _get_current_function_mode_stack() == []


def test_session_dropout_draws_from_the_generator_and_passes_identity_through():
    x = torch.ones(3, 8)
    dropped = session_dropout(nn.Dropout(0.5), x, seeded(2))
    with SessionRandomness(RowStreams.single(seeded(2))):
        assert torch.equal(dropped, nn.Dropout(0.5)(x))
    assert session_dropout(nn.Identity(), x, seeded(2)) is x
    assert torch.equal(session_dropout(nn.Dropout(0.5).eval(), x, seeded(2)), x)
