"""Shared Trainer run: `transformers.Trainer` on a split model vs on the one-process PeftModel,
from the same initial adapter, on the same examples, with the same TrainingArguments."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel, get_peft_model_state_dict
from transformers import Trainer, TrainingArguments

from device_client import EdgeConnection, SplitModel
from splitft.testing.tiny import TinyModel, lora_config_for, make_batch

EXAMPLES = 24  # 6 batches of 4: 3 optimizer steps of 2 accumulated micro-batches per epoch


@dataclass
class TrainerRun:
    losses: list[float]  # the `loss` Trainer logged at every step
    grad_norms: list[float]
    adapter: dict[str, torch.Tensor]


def examples(family: str, count: int = EXAMPLES, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    """`count` single examples (one row of make_batch each), as a map-style dataset holds them."""
    generator = torch.Generator().manual_seed(seed)
    rows: list[dict[str, torch.Tensor]] = []
    while len(rows) < count:
        batch = make_batch(family, generator)
        rows += [{k: v[i] for k, v in batch.items()} for i in range(len(next(iter(batch.values()))))]
    return rows[:count]


def training_args(out: Path, **overrides: Any) -> TrainingArguments:
    """Gradient accumulation, warmup then linear decay, weight decay, clipping (0.2: active)."""
    options: dict[str, Any] = dict(
        output_dir=str(out),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        num_train_epochs=2,
        learning_rate=5e-2,
        weight_decay=0.01,
        warmup_steps=2,
        lr_scheduler_type="linear",
        max_grad_norm=0.2,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=7,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    options.update(overrides)
    return TrainingArguments(**options)


def open_split(tiny: TinyModel, conn: EdgeConnection, model_name: str, **options: Any) -> SplitModel:
    torch.manual_seed(0)
    return SplitModel.from_pretrained(
        tiny.path,
        edge=conn,
        model=model_name,
        device_layers=1,
        head_layers=1,
        lora_config=lora_config_for(tiny.family),
        codec="raw",
        **options,
    )


def reference_from(tiny: TinyModel, adapter: Path) -> PeftModel:
    return PeftModel.from_pretrained(tiny.model_class.from_pretrained(tiny.path), adapter, is_trainable=True)


def train(
    trainer_cls: type[Trainer], model: torch.nn.Module, args: TrainingArguments, data: list, **options: Any
) -> TrainerRun:
    trainer = trainer_cls(model=model, args=args, train_dataset=data, **options)
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    if isinstance(model, SplitModel):
        adapter = model.adapter_state_dict()
    else:
        adapter = {k: v.detach().cpu() for k, v in get_peft_model_state_dict(model).items()}
    return TrainerRun(
        losses=[float(e["loss"]) for e in logged],
        grad_norms=[float(e["grad_norm"]) for e in logged if "grad_norm" in e],
        adapter=adapter,
    )
