"""`bench vit`'s backbone: a small ViT (transformers' `ViTForImageClassification`, built from a
config, nothing downloaded) pretrained on digits 0-4, every weight, and cached with
`save_pretrained` in a directory keyed by the config, the pretraining recipe and the seed."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformers import ViTConfig, ViTForImageClassification

from splitft.bench.vit.config import VitBenchConfig
from splitft.bench.vit.data import PRETRAIN_CLASSES, SPLIT_SEED, Split, pretraining_data

logger = logging.getLogger(__name__)

IMAGE_SIDE = 8
CACHE_FORMAT = 1  # bump when what a cached backbone means changes
REPORT_FILE = "pretraining.json"
EVAL_BATCH = 256
MIN_ONE_CYCLE_STEPS = 20


def vit_config(config: VitBenchConfig, num_labels: int) -> ViTConfig:
    """The backbone's architecture; no dropout, so a calibration pass is the training graph."""
    return ViTConfig(
        image_size=IMAGE_SIDE,
        patch_size=config.patch_size,
        num_channels=1,
        hidden_size=config.hidden,
        num_hidden_layers=config.layers,
        num_attention_heads=config.heads,
        intermediate_size=config.intermediate,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=num_labels,  # type: ignore[call-arg]  # a PretrainedConfig kwarg
    )


def cache_key(config: VitBenchConfig, seed: int) -> str:
    """What a cached backbone depends on: architecture, pretraining recipe and data, seed."""
    architecture = vit_config(config, len(PRETRAIN_CLASSES)).to_dict()
    for volatile in ("transformers_version", "_name_or_path", "dtype", "torch_dtype"):
        architecture.pop(volatile, None)
    what = {
        "format": CACHE_FORMAT,
        "architecture": architecture,
        "pretrain": [config.pretrain_steps, config.pretrain_batch, config.pretrain_lr],
        "data": ["sklearn digits", list(PRETRAIN_CLASSES), SPLIT_SEED],
        "seed": seed,
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:20]


def cache_root(config: VitBenchConfig) -> Path:
    if config.cache_dir:
        return Path(config.cache_dir)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "splitft" / "bench-vit"


def accuracy(model: torch.nn.Module, split: Split) -> float:
    """Share of `split` the model classifies right (eval mode, no gradients)."""
    model.eval()
    right = 0
    with torch.no_grad():
        for start in range(0, len(split), EVAL_BATCH):
            logits = model(pixel_values=split.images[start : start + EVAL_BATCH]).logits
            right += int((logits.argmax(-1) == split.labels[start : start + EVAL_BATCH]).sum())
    return right / len(split)


def pretrained_backbone(config: VitBenchConfig, seed: int) -> tuple[Path, dict[str, Any]]:
    """The backbone pretrained with `seed`: from the cache, or trained now and cached; its directory
    and pretraining report (`cached` says which)."""
    directory = cache_root(config) / cache_key(config, seed)
    report_path = directory / REPORT_FILE
    if report_path.is_file() and (directory / "config.json").is_file():
        return directory, {**json.loads(report_path.read_text()), "cached": True}
    model, report = _pretrain(config, seed)
    directory.parent.mkdir(parents=True, exist_ok=True)
    # written beside, then renamed: a run killed halfway leaves no half backbone in the cache
    staging = Path(tempfile.mkdtemp(prefix=directory.name + ".", dir=directory.parent))
    try:
        model.save_pretrained(str(staging))
        (staging / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
        try:
            staging.rename(directory)
        except OSError:  # another run cached the same backbone first: keep that one
            logger.info("bench vit: backbone %s already cached", directory.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory, {**report, "cached": False}


def pretraining_optimizer(
    model: torch.nn.Module, lr: float, steps: int
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.OneCycleLR | None]:
    """AdamW without weight decay over every weight and, when `steps` allow, one-cycle to `lr`
    (torch divides by the warm-up's length, so fewer steps train at a constant rate)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    if steps < MIN_ONE_CYCLE_STEPS:
        return optimizer, None
    return optimizer, torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=steps, pct_start=0.1
    )


def pretraining_step(
    model: torch.nn.Module,
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
) -> None:
    """One update of `pretraining_optimizer`'s recipe: gradients of `loss` clipped to norm 1
    (pretraining every weight from scratch spikes early), then the optimiser and schedule step."""
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad()
    if scheduler is not None:
        scheduler.step()


def _pretrain(config: VitBenchConfig, seed: int) -> tuple[ViTForImageClassification, dict[str, Any]]:
    """Every weight trained to tell `PRETRAIN_CLASSES` apart (AdamW, one-cycle, clipping at 1)."""
    started = time.perf_counter()
    train, heldout = pretraining_data()
    torch.manual_seed(seed)
    model = ViTForImageClassification(vit_config(config, len(PRETRAIN_CLASSES)))
    steps = config.pretrain_steps
    optimizer, scheduler = pretraining_optimizer(model, config.pretrain_lr, steps)
    rng = random.Random(seed)
    model.train()
    losses: list[float] = []
    for _ in range(steps):
        index = torch.tensor(rng.sample(range(len(train)), min(config.pretrain_batch, len(train))))
        loss = model(pixel_values=train.images[index], labels=train.labels[index]).loss
        pretraining_step(model, loss, optimizer, scheduler)
        losses.append(float(loss.detach()))
    report = {
        "classes": list(PRETRAIN_CLASSES),
        "train_images": len(train),
        "heldout_images": len(heldout),
        "steps": steps,
        "batch": config.pretrain_batch,
        "lr": config.pretrain_lr,
        "seed": seed,
        "train_loss_last_10": round(sum(losses[-10:]) / max(1, len(losses[-10:])), 4) if losses else None,
        "heldout_accuracy": round(accuracy(model, heldout), 4),
        "parameters": sum(p.numel() for p in model.parameters()),
        "seconds": round(time.perf_counter() - started, 1),
    }
    return model, report
