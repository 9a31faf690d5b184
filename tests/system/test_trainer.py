"""`transformers.Trainer` on a split model trains exactly like Trainer on the one-process PeftModel.

Real edge over gRPC (the session fixture), lossless codec. SplitTrainer (Trainer's arguments) steps
and clips both sides; plain Trainer is refused where it would train differently, and works where it
can (the split optimizer passed in, no clipping).
"""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel
from transformers import Trainer

from device_client import SplitModel, SplitTrainer
from splitft.errors import FailedPrecondition, InvalidArgument
from splitft.testing.tiny import make_batch
from tests.support.trainer_run import TrainerRun, examples, open_split, reference_from, train, training_args

TOL = 1e-5
# The adapters after six AdamW steps: every element within TOL plus 1e-4 of its size. AdamW divides
# each step by sqrt(v), so an element whose gradient is near zero turns float32 rounding of the two
# sides' different reduction orders into a visible difference: on this session's AMD EPYC two of
# about 8,000 Llama adapter elements differed by 5.2e-6 and 1.09e-5 (relative 7.7e-5), every other
# by under 1e-6. Losses and gradient norms, before any such division, stay within TOL absolute.
ADAPTER_RTOL = 1e-4


def assert_same_run(split: TrainerRun, reference: TrainerRun) -> None:
    assert len(split.losses) == len(reference.losses) == 6  # 2 epochs x 3 optimizer steps, all logged
    assert split.losses == pytest.approx(reference.losses, abs=TOL)
    assert split.grad_norms == pytest.approx(reference.grad_norms, abs=TOL)
    assert set(split.adapter) == set(reference.adapter)
    assert [k for k in split.adapter if ".2." in k], "the trunk adapter must be part of the export"
    for key, value in reference.adapter.items():
        torch.testing.assert_close(split.adapter[key], value, atol=TOL, rtol=ADAPTER_RTOL)


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_split_trainer_matches_trainer_on_the_peft_model(family, tiny_models, conn, tmp_path):
    """Gradient accumulation 2, warmup + linear decay, weight decay, max_grad_norm over both sides,
    Trainer's loss normalisation (num_items_in_batch, shifted for the causal LM); save_model writes
    the standard peft adapter, which plain peft loads, merges and evaluates to the split's logits."""
    tiny = tiny_models[family]
    split = open_split(tiny, conn, family)
    split.save_adapter(tmp_path / "initial")
    reference = reference_from(tiny, tmp_path / "initial")
    data = examples(family)
    expected = train(Trainer, reference, training_args(tmp_path / "reference"), data)
    trainer_args = training_args(tmp_path / "split")
    trainer = SplitTrainer(model=split, args=trainer_args, train_dataset=data)
    got = train_with(trainer, split)
    assert_same_run(got, expected)
    assert max(got.grad_norms) > trainer_args.max_grad_norm  # clipping was active
    assert split.stats.steps == 6  # the trunk adapter stepped with the device's

    trainer.save_model(str(tmp_path / "saved"))
    batch = make_batch(family, torch.Generator().manual_seed(9))
    split.eval()
    with torch.no_grad():
        split_logits = split(**batch).logits
    loaded = PeftModel.from_pretrained(tiny.model_class.from_pretrained(tiny.path), tmp_path / "saved").eval()
    merged = PeftModel.from_pretrained(
        tiny.model_class.from_pretrained(tiny.path), tmp_path / "saved"
    ).merge_and_unload()
    assert not isinstance(merged, PeftModel)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, split_logits, atol=TOL, rtol=0)
        torch.testing.assert_close(merged.eval()(**batch).logits, split_logits, atol=1e-4, rtol=0)
    split.close()


def train_with(trainer: Trainer, model: SplitModel) -> TrainerRun:
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    return TrainerRun(
        losses=[float(e["loss"]) for e in logged],
        grad_norms=[float(e["grad_norm"]) for e in logged],
        adapter=model.adapter_state_dict(),
    )


def test_plain_trainer_is_refused_where_it_would_train_differently(tiny_models, conn, tmp_path):
    """Its own optimizer never steps the trunk adapter; its clipping sees the device's gradients
    only. Each refusal comes at the first forward and changes neither side's adapter."""
    tiny = tiny_models["llama"]
    split = open_split(tiny, conn, "llama")
    before = split.adapter_state_dict()
    data = examples("llama", count=8)
    with pytest.raises(FailedPrecondition, match="trunk adapter on the edge would never train"):
        Trainer(model=split, args=training_args(tmp_path / "a"), train_dataset=data).train()
    optimizer = split.configure_optimizer(torch.optim.AdamW, lr=1e-2)
    with pytest.raises(FailedPrecondition, match="max_grad_norm=0.2 over the device's gradients only"):
        Trainer(
            model=split, args=training_args(tmp_path / "b"), train_dataset=data, optimizers=(optimizer, None)
        ).train()
    after = split.adapter_state_dict()
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    plain = torch.optim.SGD([p for p in split.parameters() if p.requires_grad], lr=0.1)
    with pytest.raises(InvalidArgument, match="optimizer must be the split model's"):
        SplitTrainer(
            model=split, args=training_args(tmp_path / "d"), train_dataset=data, optimizers=(plain, None)
        ).train()
    with pytest.raises(InvalidArgument, match="SplitTrainer trains a device_client.SplitModel"):
        SplitTrainer(model=torch.nn.Linear(2, 2), args=training_args(tmp_path / "c"))
    split.close()


def test_plain_trainer_with_the_split_optimizer_and_no_clipping_matches(tiny_models, conn, tmp_path):
    """Where plain Trainer can train a split model right (the split optimizer passed in, no
    clipping), it does: same losses and adapter as Trainer on the PeftModel."""
    tiny = tiny_models["llama"]
    split = open_split(tiny, conn, "llama")
    split.save_adapter(tmp_path / "initial")
    reference = reference_from(tiny, tmp_path / "initial")
    data = examples("llama")
    options = dict(max_grad_norm=0.0, lr_scheduler_type="constant", warmup_steps=0)
    ref_optimizer = torch.optim.AdamW([p for p in reference.parameters() if p.requires_grad], lr=2e-2)
    expected = train(
        Trainer, reference, training_args(tmp_path / "r", **options), data, optimizers=(ref_optimizer, None)
    )
    optimizer = split.configure_optimizer(torch.optim.AdamW, lr=2e-2)
    got = train(Trainer, split, training_args(tmp_path / "s", **options), data, optimizers=(optimizer, None))
    assert got.losses == pytest.approx(expected.losses, abs=TOL)
    for key, value in expected.adapter.items():
        torch.testing.assert_close(got.adapter[key], value, atol=TOL, rtol=0)
    split.close()
