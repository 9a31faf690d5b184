"""Shared equivalence run: split training vs the whole peft model in one process, same start and data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel, get_peft_model_state_dict

from device_client import EdgeConnection, SplitModel
from splitft.testing.tiny import TinyModel, lora_config_for, make_batch

STEPS = 10
ACCUMULATION = 2
CLIP = 0.5  # low enough that clipping is active on most steps


@dataclass
class EquivalenceRun:
    split_losses: list[float]
    reference_losses: list[float]
    split_adapter: dict[str, torch.Tensor]
    reference_adapter: dict[str, torch.Tensor]
    split_steps: int


def _train(model, optimizer, scheduler, batches: list[dict[str, torch.Tensor]]) -> list[float]:
    losses = []
    for step in range(STEPS):
        optimizer.zero_grad()
        for micro in range(ACCUMULATION):
            out = model(**batches[step * ACCUMULATION + micro])
            (out.loss / ACCUMULATION).backward()
            losses.append(out.loss.item())
        if isinstance(model, SplitModel):
            optimizer.clip_grad_norm_(CLIP)
        else:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], CLIP)
        optimizer.step()
        scheduler.step()
    return losses


def run_equivalence(
    tiny: TinyModel,
    conn: EdgeConnection,
    workdir: Path,
    model_name: str,
    device: str = "cpu",
    **options: Any,
) -> EquivalenceRun:
    """Train split and whole-model peft from the same initial adapter on the same batches; the
    device side and the reference on `device` (the edge's placement is the edge's own); `options`:
    more `from_pretrained` arguments (e.g. a privacy config with every defense off)."""
    family = tiny.family
    torch.manual_seed(0)
    split = SplitModel.from_pretrained(
        tiny.path,
        edge=conn,
        model=model_name,
        device_layers=1,
        head_layers=1,
        lora_config=lora_config_for(family),
        trunk_lora=True,
        codec="raw",
        device=device,
        **options,
    )
    split.save_adapter(workdir / "initial")
    reference = PeftModel.from_pretrained(
        tiny.model_class.from_pretrained(tiny.path), workdir / "initial", is_trainable=True
    ).to(device)
    generator = torch.Generator().manual_seed(1)
    distinct = [{k: v.to(device) for k, v in make_batch(family, generator).items()} for _ in range(4)]
    batches = [distinct[i % 4] for i in range(STEPS * ACCUMULATION)]
    hp = dict(lr=5e-2, weight_decay=0.01)
    opt_s = split.configure_optimizer(torch.optim.AdamW, **hp)
    opt_r = torch.optim.AdamW([p for p in reference.parameters() if p.requires_grad], **hp)
    sched_s = torch.optim.lr_scheduler.StepLR(opt_s, step_size=3, gamma=0.5)
    sched_r = torch.optim.lr_scheduler.StepLR(opt_r, step_size=3, gamma=0.5)
    split.train()
    reference.train()
    run = EquivalenceRun(
        split_losses=_train(split, opt_s, sched_s, batches),
        reference_losses=_train(reference, opt_r, sched_r, batches),
        split_adapter=split.adapter_state_dict(),
        reference_adapter={k: v.detach().cpu() for k, v in get_peft_model_state_dict(reference).items()},
        split_steps=split.stats.steps,
    )
    split.close()
    return run
