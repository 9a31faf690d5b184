"""`bench vit` fine-tuning: one method, at one budget, on one task, from one seed's backbone.

Every method starts from the same backbone and the same seeded new head (which trains in every
method and which no budget counts), then trains `epochs` passes of AdamW (one-cycle, weight decay
0, clipping at 1) over the task's training split in a seeded order:

* `taskedge`: TaskEdge as on main (`splitft.methods.taskedge`): input norms over
  `calibration_batches` labels-free batches of the training split, |W| x ||X|| scores, the same k
  entries in every row of every target (`budgets.taskedge_targets`), trained as sparse deltas
  (`apply_masks`). In one process: a split run trains the same model (tests/system/test_equivalence.py);
* `random` / `magnitude`: the same targets and k, at seeded random positions / by |W| alone;
* `lora`: peft LoRA (alpha = 2 x rank) on `budgets.lora_shape`'s modules;
* `head_only`: the head alone; `full`: every weight.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
import transformers
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import ViTForImageClassification

from splitft.bench.vit.backbone import EVAL_BATCH, accuracy
from splitft.bench.vit.budgets import Budget, taskedge_targets
from splitft.bench.vit.data import Split, TaskData
from splitft.methods.common import linear_weight
from splitft.methods.sparse import apply_masks
from splitft.methods.taskedge import collect_input_norms, masks_from_scores, taskedge_scores

logger = logging.getLogger(__name__)
HEAD_INIT_STD = 0.02
HEAD_SEED_OFFSET = 7919
RANDOM_SEED_OFFSET = 104_729


@dataclass(frozen=True)
class Recipe:
    """How one run trains: its rate, passes, batch size and TaskEdge's calibration batches."""

    lr: float
    epochs: int
    batch_size: int
    calibration_batches: int


def load_for_task(backbone: Path, num_labels: int, seed: int) -> ViTForImageClassification:
    """The pretrained backbone with a new `num_labels` head, the same seeded values in every method."""
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # the head is new on purpose: no "newly initialized"
    try:
        model = ViTForImageClassification.from_pretrained(
            str(backbone), num_labels=num_labels, ignore_mismatched_sizes=True, local_files_only=True
        )
    finally:
        transformers.logging.set_verbosity(verbosity)
    generator = torch.Generator().manual_seed(seed + HEAD_SEED_OFFSET)
    head = cast(nn.Linear, model.classifier)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=generator) * HEAD_INIT_STD)
        head.bias.zero_()
    model.requires_grad_(False)
    return model


def _order(size: int, seed: int) -> torch.Tensor:
    return torch.randperm(size, generator=torch.Generator().manual_seed(seed))


def _batches(split: Split, batch_size: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    order = _order(len(split), seed)
    return [
        (split.images[order[i : i + batch_size]], split.labels[order[i : i + batch_size]])
        for i in range(0, len(split), batch_size)
    ]


def _masked(model: nn.Module, scores: dict[str, torch.Tensor], k: int) -> int:
    """Train the top-k entries per row of `scores`; the entries' count."""
    wrapped = apply_masks(model, masks_from_scores(scores, k))
    return sum(m.nnz for m in wrapped.values())


def prepare(
    model: ViTForImageClassification,
    method: str,
    budget: Budget | None,
    train: Split,
    recipe: Recipe,
    seed: int,
) -> tuple[nn.Module, int]:
    """`model` set up for `method` (the head trainable in every one); the module to train and its
    trainable entries besides the head."""
    targets = taskedge_targets(model)
    if method in ("taskedge", "random", "magnitude"):
        assert budget is not None
        if method == "taskedge":
            calibration = [{"pixel_values": x} for x, _ in _batches(train, recipe.batch_size, seed + 10_000)]
            norms = collect_input_norms(model, calibration[: recipe.calibration_batches], targets)
            scores = taskedge_scores(model, norms)
        else:
            generator = torch.Generator().manual_seed(seed + RANDOM_SEED_OFFSET)
            weights = {n: linear_weight(model.get_submodule(n)).detach() for n in targets}
            scores = {
                n: (torch.rand(w.shape, generator=generator) if method == "random" else w.abs())
                for n, w in weights.items()
            }
        entries = _masked(model, scores, budget.k)
        model.classifier.requires_grad_(True)
        return model, entries
    if method == "lora":
        assert budget is not None
        rank = budget.lora.rank
        config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(budget.lora.modules))
        wrapped: Any = get_peft_model(model, config)
        entries = sum(p.numel() for n, p in wrapped.named_parameters() if "lora_" in n)
        model.classifier.requires_grad_(True)  # peft froze it; the new head trains in every method
        return wrapped, entries
    if method == "full":
        model.requires_grad_(True)
        return model, sum(p.numel() for p in cast(nn.Module, model.vit).parameters())
    model.classifier.requires_grad_(True)  # head_only
    return model, 0


def _loss(model: nn.Module, split: Split) -> float:
    model.eval()
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(split), EVAL_BATCH):
            out = model(
                pixel_values=split.images[start : start + EVAL_BATCH],
                labels=split.labels[start : start + EVAL_BATCH],
            )
            total += float(out.loss) * min(EVAL_BATCH, len(split) - start)
    return total / len(split)


def train(model: nn.Module, train_split: Split, recipe: Recipe, seed: int) -> list[float]:
    """`recipe.epochs` passes of AdamW with a one-cycle rate; the per-step losses."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=0.0)
    epochs = [_batches(train_split, recipe.batch_size, seed + epoch) for epoch in range(recipe.epochs)]
    steps = sum(len(e) for e in epochs)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=recipe.lr, total_steps=steps, pct_start=0.1
    )
    losses: list[float] = []
    model.train()
    for epoch in epochs:
        for images, labels in epoch:
            loss = model(pixel_values=images, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad()
            scheduler.step()
            losses.append(float(loss.detach()))
    return losses


def run_one(
    backbone: Path, task: TaskData, method: str, budget: Budget | None, recipe: Recipe, seed: int
) -> dict[str, Any]:
    """One run: set up, test accuracy before, train, validation and test after."""
    started = time.perf_counter()
    torch.manual_seed(seed)
    model = load_for_task(backbone, task.num_labels, seed)
    trained, entries = prepare(model, method, budget, task.train, recipe, seed)
    before = accuracy(trained, task.test)
    losses = train(trained, task.train, recipe, seed)
    return {
        "seed": seed,
        "lr": recipe.lr,
        "entries": entries,
        "head_parameters": sum(p.numel() for p in model.classifier.parameters()),
        "trainable_total": sum(p.numel() for p in trained.parameters() if p.requires_grad),
        "test_before": before,
        "test_after": accuracy(trained, task.test),
        "validation_after": accuracy(trained, task.validation),
        "validation_loss": _loss(trained, task.validation),
        "train_loss_first": losses[0],
        "train_loss_last_10": sum(losses[-10:]) / len(losses[-10:]),
        "steps": len(losses),
        "seconds": round(time.perf_counter() - started, 2),
    }
