"""Split training with a lossless codec equals training the whole PEFT model in one process."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel, get_peft_model_state_dict
from splitft.tiny import FAMILY_NAMES, lora_config_for, make_batch

from device_client import SplitModel

STEPS = 10
ACCUMULATION = 2
TOL = 1e-5


def _train(model, optimizer, scheduler, batches, clip: float) -> list[float]:
    losses = []
    for step in range(STEPS):
        optimizer.zero_grad()
        for micro in range(ACCUMULATION):
            out = model(**batches[step * ACCUMULATION + micro])
            (out.loss / ACCUMULATION).backward()
            losses.append(out.loss.item())
        if isinstance(model, SplitModel):
            optimizer.clip_grad_norm_(clip)
        else:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], clip)
        optimizer.step()
        scheduler.step()
    return losses


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_split_training_matches_local_peft(family, tiny_models, conn, tmp_path):
    tiny = tiny_models[family]
    torch.manual_seed(0)
    split = SplitModel.from_pretrained(
        tiny.path,
        edge=conn,
        model=family,
        device_layers=1,
        head_layers=1,
        lora_config=lora_config_for(family),
        trunk_lora=True,
        codec="raw",
    )
    split.save_adapter(tmp_path / "initial")
    reference = PeftModel.from_pretrained(
        tiny.model_class.from_pretrained(tiny.path), tmp_path / "initial", is_trainable=True
    )
    generator = torch.Generator().manual_seed(1)
    distinct = [make_batch(family, generator) for _ in range(4)]
    batches = [distinct[i % 4] for i in range(STEPS * ACCUMULATION)]

    hp = dict(lr=5e-2, weight_decay=0.01)
    opt_s = split.configure_optimizer(torch.optim.AdamW, **hp)
    opt_r = torch.optim.AdamW([p for p in reference.parameters() if p.requires_grad], **hp)
    sched_s = torch.optim.lr_scheduler.StepLR(opt_s, step_size=3, gamma=0.5)
    sched_r = torch.optim.lr_scheduler.StepLR(opt_r, step_size=3, gamma=0.5)
    split.train()
    reference.train()
    # clip at 0.5 so that clipping is active on most steps
    losses_s = _train(split, opt_s, sched_s, batches, clip=0.5)
    losses_r = _train(reference, opt_r, sched_r, batches, clip=0.5)

    assert losses_s == pytest.approx(losses_r, abs=TOL)
    assert sum(losses_s[-4:]) < sum(losses_s[:4])  # it learned the 4 batches it cycles through
    final_s = split.adapter_state_dict()
    final_r = {k: v.detach() for k, v in get_peft_model_state_dict(reference).items()}
    assert set(final_s) == set(final_r)
    trunk_keys = [k for k in final_s if f".{2}." in k]
    assert trunk_keys, "the trunk adapter must be part of the export"
    for key, value in final_r.items():
        torch.testing.assert_close(final_s[key], value, atol=TOL, rtol=0)
    assert split.stats.steps == STEPS
    split.close()


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_saved_adapter_reproduces_eval_logits(family, tiny_models, conn, tmp_path):
    tiny = tiny_models[family]
    torch.manual_seed(3)
    split = SplitModel.from_pretrained(
        tiny.path,
        edge=conn,
        model=family,
        device_layers=2,
        head_layers=1,
        lora_config=lora_config_for(family),
    )
    opt = split.configure_optimizer(torch.optim.AdamW, lr=1e-2)
    generator = torch.Generator().manual_seed(4)
    for _ in range(3):
        split(**make_batch(family, generator)).loss.backward()
        opt.step()
        opt.zero_grad()
    split.save_adapter(tmp_path / "adapter")
    batch = make_batch(family, generator)
    split.eval()
    with torch.no_grad():
        logits_split = split(**batch).logits
    loaded = PeftModel.from_pretrained(
        tiny.model_class.from_pretrained(tiny.path), tmp_path / "adapter"
    ).eval()
    with torch.no_grad():
        logits_loaded = loaded(**batch).logits
    torch.testing.assert_close(logits_split, logits_loaded, atol=1e-5, rtol=0)
    split.close()
