"""`bench fewshot`'s config and its --quick preset."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from splitft.bench.fewshot.data import EPISODE_PACKAGES
from splitft.bench.vit.config import VitBenchConfig
from splitft.errors import InvalidArgument

METHODS = ("prototypes", "last_layer", "full", "tinytrain")
# AdamW learning rates, fixed before any run (not tuned on the query sets): the head and the
# selected channels move fast, every weight of the backbone slowly.
DEFAULT_LR = {"last_layer": 1e-2, "full": 1e-3, "tinytrain": 1e-2}
# vit-digits: `bench vit`'s ViT (digits 0-4), episodes of digits 5-9; bert-stdlib: a tiny BERT
# pretrained in the run on stdlib docstrings (too weak: its episodes score at chance, see docs)
BACKBONES = ("vit-digits", "bert-stdlib")
VIT_WAYS = 5  # unseen digits


@dataclass
class FewshotBenchConfig:
    """Episodes, budgets, the backbone and its pretraining."""

    shots: tuple[int, ...] = (1, 5, 10)
    ways: int = 5
    queries: int = 15  # per class
    seeds: tuple[int, ...] = (0, 1, 2)  # one backbone per seed, and that seed's episodes
    episodes: int = 6  # per seed and shot count
    steps: int = 20  # fine-tuning steps per episode, each on the whole support set
    # (memory, MACs) budgets of TinyTrain, as shares of what training every channel of every block
    # Linear costs on the episode's support set (the cost model's figures); one TinyTrain run each
    budgets: tuple[tuple[float, float], ...] = ((0.1, 0.1), (0.3, 0.3))
    lr: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_LR))
    layers: int = 4
    hidden: int = 64
    max_length: int = 64  # bytes per docstring, the start token included
    pretrain_steps: int = 400
    pretrain_batch: int = 32
    pretrain_lr: float = 2e-3
    threads: int = 1  # torch threads (1: on a loaded machine 2 can be 20x slower)
    backbone: str = "vit-digits"
    # vit-digits: `bench vit`'s cache (None: its default) and overrides of its config (architecture,
    # pretraining); the layers/hidden/max_length/pretrain_* fields above are bert-stdlib's
    cache_dir: str | None = None
    vit: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.shots = tuple(int(s) for s in self.shots)
        self.seeds = tuple(int(s) for s in self.seeds)
        self.budgets = tuple((float(m), float(c)) for m, c in self.budgets)
        self.lr = {**DEFAULT_LR, **self.lr}
        positive = ("ways", "queries", "episodes", "steps", "layers", "hidden", "pretrain_batch", "threads")
        if any(getattr(self, name) < 1 for name in positive) or not self.shots or min(self.shots) < 1:
            raise InvalidArgument(f"shots and {', '.join(positive)} must be >= 1")
        if self.backbone not in BACKBONES:
            raise InvalidArgument(f"backbone must be one of {BACKBONES}, got {self.backbone!r}")
        known = {f.name for f in fields(VitBenchConfig)} - {"cache_dir"}
        if set(self.vit) - known:
            raise InvalidArgument(f"vit overrides must be among {sorted(known)}, got {sorted(self.vit)}")
        classes = VIT_WAYS if self.backbone == "vit-digits" else len(EPISODE_PACKAGES)
        if not 2 <= self.ways <= classes:
            raise InvalidArgument(f"ways must be in [2, {classes}] (the held-out classes)")
        if not self.seeds or not self.budgets:
            raise InvalidArgument("give at least one seed and one budget")
        if any(not (0 < m <= 1 and 0 < c <= 1) for m, c in self.budgets):
            raise InvalidArgument("every budget share must be in (0, 1]")
        if self.pretrain_steps < 0 or self.max_length < 8 or self.pretrain_lr <= 0:
            raise InvalidArgument("pretrain_steps must be >= 0, max_length >= 8, pretrain_lr > 0")
        if self.hidden % 4:
            raise InvalidArgument("hidden must be a multiple of 4 (4 attention heads)")


# `--quick`: one seed, one episode per shot count, a short pretraining (the e2e test runs it).
QUICK: dict[str, Any] = {
    "shots": (1, 5),
    "seeds": (0,),
    "episodes": 1,
    "steps": 4,
    "queries": 4,
    "pretrain_steps": 20,
    "max_length": 32,
    "budgets": ((0.2, 0.3),),
    # vit-digits: `bench vit --quick`'s small ViT and short pretraining (its own cache entry)
    "vit": {"hidden": 32, "layers": 2, "heads": 2, "intermediate": 256, "pretrain_steps": 60},
}
