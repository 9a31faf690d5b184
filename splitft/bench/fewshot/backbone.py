"""`bench fewshot`'s backbone: a tiny BERT (bytes as tokens) built from a config and pretrained in
the run to tell BACKBONE_PACKAGES' docstrings apart. Nothing is downloaded."""

from __future__ import annotations

import random
import time
from typing import Any

import torch
from transformers import BertConfig, BertForSequenceClassification

from splitft.bench.fewshot.config import FewshotBenchConfig
from splitft.bench.fewshot.data import BACKBONE_PACKAGES, MAX_BYTE_ID, PAD_ID, FewshotData, encode
from splitft.bench.vit.backbone import pretraining_optimizer, pretraining_step

EVAL_BATCH = 64


def build_backbone(config: FewshotBenchConfig, seed: int) -> BertForSequenceClassification:
    """A random-init tiny BERT, no dropout (so the cost model's eval-mode pass is the training graph)."""
    torch.manual_seed(seed)
    bert = BertConfig(
        vocab_size=MAX_BYTE_ID + 1,
        hidden_size=config.hidden,
        num_hidden_layers=config.layers,
        num_attention_heads=4,
        intermediate_size=4 * config.hidden,
        max_position_embeddings=max(config.max_length, 8),
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=PAD_ID,
        num_labels=len(BACKBONE_PACKAGES),  # type: ignore[call-arg]  # PretrainedConfig kwarg
    )
    return BertForSequenceClassification(bert)


def accuracy(model: torch.nn.Module, examples: list[tuple[str, int]], max_length: int) -> float:
    """Share of `examples` the model classifies right (eval mode, no gradients)."""
    right = 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(examples), EVAL_BATCH):
            chunk = examples[start : start + EVAL_BATCH]
            batch = encode([t for t, _ in chunk], [y for _, y in chunk], max_length)
            labels = batch.pop("labels")
            right += int((model(**batch).logits.argmax(-1) == labels).sum())
    return right / len(examples)


def pretrain(
    config: FewshotBenchConfig, data: FewshotData, seed: int
) -> tuple[BertForSequenceClassification, dict[str, Any]]:
    """The backbone trained on the backbone classes (every weight, AdamW, one-cycle), and its report."""
    started = time.perf_counter()
    model = build_backbone(config, seed)
    steps = config.pretrain_steps
    optimizer, scheduler = pretraining_optimizer(model, config.pretrain_lr, steps)
    rng = random.Random(seed)
    model.train()
    for _ in range(steps):
        chunk = rng.sample(data.backbone_train, min(config.pretrain_batch, len(data.backbone_train)))
        loss = model(**encode([t for t, _ in chunk], [y for _, y in chunk], config.max_length)).loss
        pretraining_step(model, loss, optimizer, scheduler)
    report = {
        "classes": list(BACKBONE_PACKAGES),
        "train_examples": len(data.backbone_train),
        "steps": steps,
        "heldout_accuracy": round(accuracy(model, data.backbone_heldout, config.max_length), 4),
        "parameters": sum(p.numel() for p in model.parameters()),
        "seconds": round(time.perf_counter() - started, 1),
    }
    return model, report
