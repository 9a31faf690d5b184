"""A split model starts from a saved whole-model adapter (a federated round's global adapter, a
checkpoint): the device's keys load here, the trunk's through the edge's `LoadAdapter`; exactly,
before training, or refused with the reason."""

from __future__ import annotations

import pytest
import torch

from splitft.errors import FailedPrecondition, InvalidArgument
from splitft.testing.tiny import lora_config_for, make_batch
from tests.support.split import split_llama


def _trained(tiny, conn, steps: int = 3):
    model = split_llama(tiny, conn, seed=5)
    optimizer = model.configure_optimizer(torch.optim.AdamW, lr=5e-2)
    generator = torch.Generator().manual_seed(2)
    for _ in range(steps):
        model(**make_batch("llama", generator)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model


def _logits(model, batch):
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


def test_a_saved_adapter_loads_into_a_fresh_split_model_exactly(tiny_models, conn, tmp_path) -> None:
    tiny = tiny_models["llama"]
    source = _trained(tiny, conn)
    source.save_adapter(tmp_path / "adapter")
    batch = make_batch("llama", torch.Generator().manual_seed(9))
    expected_state, expected_logits = source.adapter_state_dict(), _logits(source, batch)
    source.close()
    fresh = split_llama(tiny, conn, seed=77)  # another initialisation on both sides
    assert any(not torch.equal(fresh.adapter_state_dict()[k], v) for k, v in expected_state.items())
    fresh.load_adapter(tmp_path / "adapter")
    loaded = fresh.adapter_state_dict()
    assert set(loaded) == set(expected_state) and any(".2." in k for k in loaded)  # the trunk's too
    for key, value in expected_state.items():
        assert torch.equal(loaded[key], value), key
    torch.testing.assert_close(_logits(fresh, batch), expected_logits, atol=0, rtol=0)
    fresh.close()


def test_loading_after_training_started_is_refused(tiny_models, conn) -> None:
    model = _trained(tiny_models["llama"], conn, steps=1)
    with pytest.raises(FailedPrecondition, match="before the session's first forward and step"):
        model.load_adapter(model.adapter_state_dict())
    model.close()


def test_an_adapter_that_does_not_fit_is_refused_and_the_session_goes_on(tiny_models, conn) -> None:
    tiny = tiny_models["llama"]
    model = split_llama(tiny, conn, seed=1)
    state = model.adapter_state_dict()
    trunk_key = next(k for k in state if ".2." in k)
    device_key = next(k for k in state if ".0." in k)
    without_trunk_key = {k: v for k, v in state.items() if k != trunk_key}
    with pytest.raises(
        InvalidArgument, match=r"exactly the \d+ keys of the session's trunk adapter; missing"
    ):
        model.load_adapter(without_trunk_key)
    misshapen = {**state, device_key: torch.zeros(3, 3)}
    with pytest.raises(InvalidArgument, match=r"has shape \[3, 3\], the device's adapter's is"):
        model.load_adapter(misshapen)
    as_ints = {**state, trunk_key: state[trunk_key].to(torch.int64)}
    with pytest.raises(InvalidArgument, match="must be float32, bfloat16 or float16"):
        model.load_adapter(as_ints)
    assert all(
        torch.equal(model.adapter_state_dict()[k], v) for k, v in state.items()
    )  # neither side changed
    model.load_adapter(state)  # and the right adapter still loads
    optimizer = model.configure_optimizer(torch.optim.AdamW, lr=1e-2)
    model(**make_batch("llama", torch.Generator().manual_seed(0))).loss.backward()
    optimizer.step()
    model.close()


def test_an_adapter_of_another_rank_is_refused(tiny_models, conn, tmp_path) -> None:
    tiny = tiny_models["llama"]
    other = split_llama(tiny, conn, seed=1, lora_config=lora_config_for("llama", r=8))
    other.save_adapter(tmp_path / "r8")
    other.close()
    model = split_llama(tiny, conn, seed=1)  # rank 4
    with pytest.raises(InvalidArgument, match="the adapter's r is 8, this model's is 4"):
        model.load_adapter(tmp_path / "r8")
    model.close()
