"""The audited training: the demo task trained split across a real edge on loopback, with the device's
connection tapped (`splitft.privacy.wire_tap`), so the attacks see what the edge received and nothing
else."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import LoraConfig
from transformers import AutoTokenizer

from device_client import EdgeConnection, SplitModel
from edge_server import EdgeConfig, EdgeServer
from splitft.audit.config import AuditConfig
from splitft.data.stdlib_task import Example, TextTask, batches
from splitft.privacy.wire_tap import WireTap

logger = logging.getLogger(__name__)
EDGE_MODEL = "audited"


@dataclass
class Epoch:
    """One epoch's training batches, in the order the edge received them."""

    input_ids: list[torch.Tensor] = field(default_factory=list)
    masks: list[torch.Tensor] = field(default_factory=list)
    labels: list[torch.Tensor] = field(default_factory=list)
    forwards: list[int] = field(default_factory=list)  # index in the tap's forward lists
    backwards: list[int] = field(default_factory=list)  # index in the tap's gradient list


@dataclass
class Recording:
    tap: WireTap
    epochs: list[Epoch]
    accuracy: float  # held-out, through the edge, with the defenses on
    special_ids: set[int]


def _encode(tokenizer, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


@torch.no_grad()
def _accuracy(model: SplitModel, tokenizer, examples: tuple[Example, ...], max_length: int) -> float:
    model.eval()
    correct = 0
    for texts, labels in batches(examples, 64):
        logits = model(**_encode(tokenizer, texts, max_length)).logits
        correct += int((logits.argmax(-1) == torch.tensor(labels)).sum())
    return correct / max(1, len(examples))


def train_tapped(config: AuditConfig, model_dir: Path, task: TextTask) -> Recording:
    """Train `task` split as the demo does (LoRA on every attention and dense layer, OneCycle),
    recording the wire; returns the recording and the held-out accuracy."""
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    tap = WireTap()
    edge = EdgeServer(EdgeConfig(model_dirs=[f"{EDGE_MODEL}={model_dir}"], port=0, insecure=True)).start()
    try:
        with EdgeConnection(edge.address, insecure=True, interceptors=[tap]) as conn:
            torch.manual_seed(config.seed)
            lora = LoraConfig(
                r=config.lora_rank,
                lora_alpha=2 * config.lora_rank,
                target_modules=["query", "key", "value", "dense"],
                task_type="SEQ_CLS",
            )
            model = SplitModel.from_pretrained(
                model_dir,
                edge=conn,
                model=EDGE_MODEL,
                device_layers=config.device_layers,
                head_layers=config.head_layers,
                lora_config=lora,
                trunk_lora=not config.privacy.withhold_gradients,  # nothing to train it on otherwise
                config_overrides={"num_labels": task.num_labels},
                privacy=config.privacy,
                seed=config.seed,
            )
            with model:
                epochs = _train(model, tokenizer, task, config, tap)
                accuracy = _accuracy(model, tokenizer, task.heldout, config.max_length)
    finally:
        edge.stop(grace=1)
    return Recording(tap, epochs, accuracy, set(tokenizer.all_special_ids))


def _private_warmup(model: SplitModel, tokenizer, task: TextTask, config: AuditConfig, tap: WireTap) -> None:
    """The private warm-up's forwards, before the training proper: the device's blocks train on the
    penalties (and with `warmup_task` the task through the public trunk on the device: the labels are
    passed), with an optimizer of their own at a constant learning rate (the training's schedule is the
    same as without a warm-up), and nothing crosses the wire."""
    steps, sent = config.privacy.private_warmup, (len(tap.sent_hidden), len(tap.sent_grads))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.01)
    model.train()
    train, taken, cycle = task.train[:: config.train_stride], 0, 0
    while taken < steps:
        for texts, labels in batches(train, config.batch_size, shuffle_seed=config.seed + 1000 + cycle):
            out = model(**_encode(tokenizer, texts, config.max_length), labels=torch.tensor(labels))
            out.loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            taken += 1
            if taken >= steps:
                break
        cycle += 1
    if (len(tap.sent_hidden), len(tap.sent_grads)) != sent:
        raise RuntimeError("the private warm-up sent tensors to the edge")
    logger.info(
        "audit: private warm-up of %d forwards, last loss %.3f%s", steps, out.loss.item(), _leak(model)
    )


def _train(model: SplitModel, tokenizer, task: TextTask, config: AuditConfig, tap: WireTap) -> list[Epoch]:
    optimizer = model.configure_optimizer(torch.optim.AdamW, lr=config.lr, weight_decay=0.01)
    steps_per_epoch = -(-len(task.train[:: config.train_stride]) // config.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=steps_per_epoch * config.epochs, pct_start=0.1
    )
    if config.privacy.private_warmup:
        _private_warmup(model, tokenizer, task, config, tap)
    epochs = []
    for epoch in range(config.epochs):
        record = Epoch()
        model.train()
        train = task.train[:: config.train_stride]
        for texts, labels in batches(train, config.batch_size, shuffle_seed=config.seed + epoch):
            batch = _encode(tokenizer, texts, config.max_length)
            record.forwards.append(len(tap.sent_hidden))
            record.backwards.append(len(tap.sent_grads))
            out = model(**batch, labels=torch.tensor(labels))
            out.loss.backward()
            optimizer.clip_grad_norm_(1.0)
            optimizer.step()
            optimizer.zero_grad()
            scheduler.step()
            record.input_ids.append(batch["input_ids"])
            record.masks.append(batch["attention_mask"])
            record.labels.append(torch.tensor(labels))
        logger.info("audit: epoch %d trained, last loss %.3f%s", epoch + 1, out.loss.item(), _leak(model))
        epochs.append(record)
    return epochs


def _leak(model: SplitModel) -> str:
    """The CCA penalty's last leak, for the log (empty without the penalty)."""
    guard = model._guard
    leak = None if guard is None else guard.last_leak
    return "" if leak is None else f", CCA leak {leak:.3f}"
