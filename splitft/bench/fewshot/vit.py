"""`bench fewshot --backbone vit-digits`: `bench vit`'s ViT, pretrained on scikit-learn's digits 0-4
(read from `bench vit`'s cache, or pretrained there and cached), with episodes over the digits it
never saw (5-9): every image of those digits, drawn from `bench vit`'s train, validation and test
splits alike (an episode's support and query sets are disjoint; the backbone saw none of them)."""

from __future__ import annotations

import random
from typing import Any

import torch
from transformers import ViTForImageClassification

from splitft.bench.fewshot.data import Episode
from splitft.bench.vit.backbone import pretrained_backbone
from splitft.bench.vit.config import VitBenchConfig
from splitft.bench.vit.data import TASK_CLASSES, task_data

VIT_EPISODE_CLASSES = tuple(str(d) for d in TASK_CLASSES)


def vit_bench_config(overrides: dict[str, Any], cache_dir: str | None) -> VitBenchConfig:
    """`bench vit`'s config (its defaults, hence its cached backbones, unless `overrides` says)."""
    return VitBenchConfig(**{**overrides, "cache_dir": cache_dir})


def load_vit_backbone(
    overrides: dict[str, Any], cache_dir: str | None, seed: int
) -> tuple[ViTForImageClassification, dict[str, Any]]:
    """The backbone pretrained with `seed` and its pretraining report (with `cached`)."""
    directory, report = pretrained_backbone(vit_bench_config(overrides, cache_dir), seed)
    model = ViTForImageClassification.from_pretrained(str(directory))
    return model, {**report, "classes": [str(c) for c in report["classes"]], "directory": directory.name}


def load_vit_pool() -> dict[str, torch.Tensor]:
    """Per unseen digit, every one of its images `[n, 1, 8, 8]` (train, validation and test splits)."""
    task = task_data("digits")
    pool: dict[str, torch.Tensor] = {}
    for label, name in enumerate(VIT_EPISODE_CLASSES):
        parts = [s.images[s.labels == label] for s in (task.train, task.validation, task.test)]
        pool[name] = torch.cat(parts)
    return pool


def sample_vit_episode(
    pool: dict[str, torch.Tensor], ways: int, shots: int, queries: int, rng: random.Random
) -> Episode:
    """`ways` digits of the pool, `shots` support and `queries` query images of each, disjoint."""
    classes = tuple(sorted(rng.sample(sorted(pool), ways)))
    support: tuple[list[torch.Tensor], list[int]] = ([], [])
    query: tuple[list[torch.Tensor], list[int]] = ([], [])
    for label, name in enumerate(classes):
        picked = rng.sample(range(len(pool[name])), shots + queries)
        support[0].append(pool[name][picked[:shots]])
        support[1].extend([label] * shots)
        query[0].append(pool[name][picked[shots:]])
        query[1].extend([label] * queries)
    return Episode(
        classes,
        {"pixel_values": torch.cat(support[0]), "labels": torch.tensor(support[1])},
        {"pixel_values": torch.cat(query[0]), "labels": torch.tensor(query[1])},
    )
