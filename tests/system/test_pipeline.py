"""Micro-batch pipelining: the same gradients and training as without it, bad input refused."""

from __future__ import annotations

import pytest
import torch

from device_client import EdgeConnection, SplitModel
from device_client.pipeline import split_batch
from edge_server import EdgeServer
from splitft.errors import InvalidArgument
from splitft.testing.tiny import lora_config_for, make_batch

STEPS = 3


def _train(tiny, edge: EdgeServer, family: str, micro_batches: int, pipeline: bool):
    batches = [make_batch(family, torch.Generator().manual_seed(i), batch=6) for i in range(STEPS)]
    with EdgeConnection(edge.address, insecure=True) as conn:
        torch.manual_seed(0)
        model = SplitModel.from_pretrained(
            tiny.path, edge=conn, model=family, device_layers=1, head_layers=1,
            lora_config=lora_config_for(family), seed=3,
        )  # fmt: skip
        opt = model.configure_optimizer(torch.optim.AdamW, lr=1e-2)
        model.train()
        losses, grads = [], []
        for batch in batches:
            losses.append(model.forward_backward(batch, micro_batches=micro_batches, pipeline=pipeline))
            grads.append([p.grad.clone() for p in model.parameters() if p.requires_grad])
            opt.clip_grad_norm_(0.5)
            opt.step()
            opt.zero_grad()
        state = model.adapter_state_dict()
        model.close()
    return losses, grads, state


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_pipelined_micro_batches_equal_the_unpipelined_run_exactly(tiny_models, edge, family) -> None:
    tiny = tiny_models[family]
    plain = _train(tiny, edge, family, micro_batches=3, pipeline=False)
    piped = _train(tiny, edge, family, micro_batches=3, pipeline=True)
    assert piped[0] == plain[0]  # losses, to the bit
    for step_a, step_b in zip(plain[1], piped[1], strict=True):
        for a, b in zip(step_a, step_b, strict=True):
            assert torch.equal(a, b)
    assert set(plain[2]) == set(piped[2])
    for key, value in plain[2].items():
        assert torch.equal(value, piped[2][key]), key


def test_one_micro_batch_is_an_ordinary_step(tiny_models, edge) -> None:
    """micro_batches=1 is loss.backward() on the whole batch (bert: per-sample-mean loss)."""
    tiny = tiny_models["bert"]
    whole = _train(tiny, edge, "bert", micro_batches=1, pipeline=True)
    sliced = _train(tiny, edge, "bert", micro_batches=2, pipeline=True)
    assert whole[0] == pytest.approx(sliced[0], abs=1e-5)  # bert's mean CE splits by sample share


def test_split_batch_and_bad_micro_batch_counts() -> None:
    batch = {"input_ids": torch.arange(10).reshape(5, 2), "labels": torch.arange(5), "flag": True}
    pieces = split_batch(batch, 2)
    assert [p["input_ids"].shape[0] for p in pieces] == [3, 2] and pieces[1]["flag"] is True
    for bad in (0, 6, 2.0, True):
        with pytest.raises(InvalidArgument, match="micro_batches"):
            split_batch(batch, bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="first dimension"):
        split_batch({"a": torch.zeros(3, 1), "b": torch.zeros(4, 1)}, 2)


def test_a_failing_micro_batch_raises_in_the_caller_and_the_model_goes_on(tiny_models, edge) -> None:
    tiny = tiny_models["llama"]
    with EdgeConnection(edge.address, insecure=True) as conn:
        model = SplitModel.from_pretrained(
            tiny.path, edge=conn, model="llama", device_layers=1, head_layers=1,
            lora_config=lora_config_for("llama"),
        )  # fmt: skip
        batch = make_batch("llama", torch.Generator().manual_seed(0), batch=4)
        broken = dict(batch)
        del broken["labels"]
        with pytest.raises(InvalidArgument, match="scalar loss"):
            model.forward_backward(broken, micro_batches=2)
        model.zero_grad()
        assert model.forward_backward(batch, micro_batches=2) > 0
        model.close()
