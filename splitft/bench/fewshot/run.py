"""`splitft bench fewshot`: TinyTrain in its regime, few-shot episodes of classes the backbone never
saw, against last-layer-only and full fine-tuning (TinyTrain's baselines), in one process.

Per seed: pretrain a backbone (`backbone.py`), then for every shot count `episodes` N-way K-shot
episodes of the held-out packages (`data.py`), every method on each (`episode.py`), in an order that
rotates from episode to episode. Memory is the torch allocator's peak during the first two steps
above their start (`measure.py`), the same instrument as `bench memory`; TinyTrain's rows also carry
the cost model's prediction of it. No offline meta-training: the backbone is pretrained with plain
supervised classification only.
"""

from __future__ import annotations

import json
import logging
import os
import random
import statistics
import time
from dataclasses import asdict
from typing import Any

import torch

from splitft.bench.fewshot.backbone import pretrain
from splitft.bench.fewshot.config import FewshotBenchConfig
from splitft.bench.fewshot.data import EPISODE_PACKAGES, load_data, sample_episode
from splitft.bench.fewshot.episode import method_names, prepare, run_episode
from splitft.bench.fewshot.vit import (
    VIT_EPISODE_CLASSES,
    load_vit_backbone,
    load_vit_pool,
    sample_vit_episode,
)

logger = logging.getLogger(__name__)
MIB = 1024 * 1024


class _Backbones:
    """The chosen backbone family: its pretrained model per seed, its episode pool and sampler."""

    def __init__(self, config: FewshotBenchConfig) -> None:
        self.config = config
        self.vit = config.backbone == "vit-digits"
        self.data = None if self.vit else load_data()
        self.vit_pool = load_vit_pool() if self.vit else {}

    def pretrained(self, seed: int) -> tuple[Any, dict[str, Any]]:
        if self.vit:
            return load_vit_backbone(self.config.vit, self.config.cache_dir, seed)
        assert self.data is not None
        return pretrain(self.config, self.data, seed)

    def episode(self, shots: int, rng: random.Random) -> Any:
        c = self.config
        if self.vit:
            return sample_vit_episode(self.vit_pool, c.ways, shots, c.queries, rng)
        assert self.data is not None
        return sample_episode(self.data.episode_pool, c.ways, shots, c.queries, c.max_length, rng)

    def pool_sizes(self) -> dict[str, int]:
        if self.vit:
            return {k: len(v) for k, v in self.vit_pool.items()}
        assert self.data is not None
        return {k: len(v) for k, v in self.data.episode_pool.items()}


def run_fewshot_bench(config: FewshotBenchConfig) -> str:
    """Run every seed, shot count and episode; return the JSON report."""
    started = time.perf_counter()
    torch.set_num_threads(config.threads)
    source = _Backbones(config)
    methods = method_names(config.budgets)
    runs: list[dict[str, Any]] = []
    backbones: dict[str, Any] = {}
    for seed in config.seeds:
        backbone, backbones[str(seed)] = source.pretrained(seed)
        rng = random.Random(seed)
        for shots in config.shots:
            for index in range(config.episodes):
                episode = source.episode(shots, rng)
                ctx = prepare(backbone, episode, config.ways)
                turn = (index + shots) % len(methods)
                order = methods[turn:] + methods[:turn]  # alternate the order
                for result in run_episode(ctx, order, config.lr, config.steps):
                    runs.append({"seed": seed, "shots": shots, "episode": index, **result})
                logger.info("seed %d, %d-shot episode %d done", seed, shots, index)
    report = {
        "benchmark": "fewshot",
        "backbone": config.backbone,
        "config": asdict(config),
        "data": {
            "backbone_classes": backbones[str(config.seeds[0])]["classes"],
            "episode_classes": list(VIT_EPISODE_CLASSES if source.vit else EPISODE_PACKAGES),
            "episode_pool": source.pool_sizes(),
        },
        "backbones": backbones,
        "meta_training": False,
        "summary": summarize(runs, config),
        "selections": _selections(runs),
        "runs": runs,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "seconds": round(time.perf_counter() - started, 1),
    }
    return json.dumps(report, indent=2)


def _spread(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(runs: list[dict[str, Any]], config: FewshotBenchConfig) -> list[dict[str, Any]]:
    """Per shot count and method: accuracy (mean, std over episodes, std of the seeds' means),
    memory and MACs (means)."""
    rows = []
    for shots in config.shots:
        for method in method_names(config.budgets):
            mine = [r for r in runs if r["shots"] == shots and r["method"] == method]
            if not mine:
                continue
            accuracy = [r["accuracy"] for r in mine]
            per_seed = [statistics.mean(r["accuracy"] for r in mine if r["seed"] == s) for s in config.seeds]
            row: dict[str, Any] = {
                "shots": shots,
                "method": method,
                "episodes": len(mine),
                "accuracy_mean": round(statistics.mean(accuracy), 4),
                "accuracy_std_episodes": round(_spread(accuracy), 4),
                "accuracy_std_seeds": round(_spread(per_seed), 4),
                "trainable_mean": round(statistics.mean(r["trainable"] for r in mine)),
            }
            if method != "prototypes":
                row["measured_mib_mean"] = round(statistics.mean(r["measured_bytes"] for r in mine) / MIB, 3)
                row["backward_macs_mean"] = round(statistics.mean(r["backward_macs"] for r in mine))
            predicted = [r for r in mine if r.get("predicted_bytes")]
            if predicted:
                ratios = [r["predicted_bytes"] / r["measured_bytes"] for r in predicted]
                row["predicted_mib_mean"] = round(
                    statistics.mean(r["predicted_bytes"] for r in predicted) / MIB, 3
                )
                row["predicted_over_measured_min"] = round(min(ratios), 3)
                row["predicted_over_measured_max"] = round(max(ratios), 3)
            rows.append(row)
    return rows


def _selections(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every TinyTrain selection: its budgets, layers, predicted and measured bytes."""
    return [
        {
            "seed": r["seed"],
            "shots": r["shots"],
            "episode": r["episode"],
            "method": r["method"],
            "budget": r["budget"],
            "layers": len(r["selection"]),
            "predicted_bytes": r["predicted_bytes"],
            "measured_bytes": r["measured_bytes"],
            "predicted_over_measured": round(r["predicted_bytes"] / r["measured_bytes"], 3),
        }
        for r in runs
        if r.get("predicted_bytes")
    ]


def markdown_table(report_json: str) -> str:
    """The summary as a Markdown table."""
    report = json.loads(report_json)
    lines = [
        "| shots | method | accuracy mean (std episodes / std seeds) | trainable | measured MiB | "
        "predicted MiB (pred/meas min-max) | backward MACs |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in report["summary"]:
        predicted = "-"
        if "predicted_mib_mean" in row:
            low, high = row["predicted_over_measured_min"], row["predicted_over_measured_max"]
            predicted = f"{row['predicted_mib_mean']} ({low}-{high})"
        mean, episodes, seeds = (
            100 * row[k] for k in ("accuracy_mean", "accuracy_std_episodes", "accuracy_std_seeds")
        )
        lines.append(
            f"| {row['shots']} | {row['method']} | {mean:.1f}% ({episodes:.1f} / {seeds:.1f}) | "
            f"{row['trainable_mean']:,} | {row.get('measured_mib_mean', '-')} | {predicted} | "
            f"{row.get('backward_macs_mean', 0):,} |"
        )
    return "\n".join(lines)
