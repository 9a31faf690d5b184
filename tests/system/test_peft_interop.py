"""A peft adapter trained elsewhere (one process, plain peft) starts a split model, which continues
training it exactly as Trainer continues it on the one-process model; bad adapters are refused
before a session opens."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model
from transformers import Trainer

from device_client import SplitModel, SplitTrainer
from splitft.errors import InvalidArgument, NotFound
from splitft.testing.tiny import lora_config_for, make_batch
from tests.support.trainer_run import examples, reference_from, train, training_args

TOL = 1e-5


def _train_elsewhere(tiny, out) -> None:
    """Three AdamW steps of plain peft on the whole model, saved with peft's save_pretrained."""
    torch.manual_seed(5)
    model = get_peft_model(tiny.model_class.from_pretrained(tiny.path), lora_config_for(tiny.family))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    generator = torch.Generator().manual_seed(6)
    for _ in range(3):
        model(**make_batch(tiny.family, generator)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(str(out))


def test_split_model_continues_an_adapter_trained_with_plain_peft(tiny_models, conn, tmp_path):
    tiny = tiny_models["llama"]
    _train_elsewhere(tiny, tmp_path / "elsewhere")
    split = SplitModel.from_pretrained(
        tiny.path, edge=conn, model="llama", device_layers=1, head_layers=1, adapter=tmp_path / "elsewhere"
    )
    reference = reference_from(tiny, tmp_path / "elsewhere")
    batch = make_batch("llama", torch.Generator().manual_seed(8))
    split.eval()
    reference.eval()
    with torch.no_grad():  # the adapter as loaded, both sides of the split
        torch.testing.assert_close(split(**batch).logits, reference(**batch).logits, atol=TOL, rtol=0)
    data = examples("llama", count=16)
    args = dict(num_train_epochs=1)
    expected = train(Trainer, reference, training_args(tmp_path / "r", **args), data)
    got = train(SplitTrainer, split, training_args(tmp_path / "s", **args), data)
    assert got.losses == pytest.approx(expected.losses, abs=TOL)
    for key, value in expected.adapter.items():
        torch.testing.assert_close(got.adapter[key], value, atol=TOL, rtol=0)
    split.close()


def test_a_bad_adapter_is_refused_before_a_session_opens(tiny_models, conn, edge, tmp_path):
    tiny = tiny_models["llama"]
    _train_elsewhere(tiny, tmp_path / "elsewhere")
    sessions = edge.sessions.count()
    with pytest.raises(NotFound, match="is not a peft adapter"):
        SplitModel.from_pretrained(tiny.path, edge=conn, model="llama", device_layers=1, adapter=tmp_path)
    with pytest.raises(InvalidArgument, match="the adapter's r is 4, this model's is 8"):
        SplitModel.from_pretrained(
            tiny.path,
            edge=conn,
            model="llama",
            device_layers=1,
            lora_config=lora_config_for("llama", r=8),
            adapter=tmp_path / "elsewhere",
        )
    assert edge.sessions.count() == sessions
