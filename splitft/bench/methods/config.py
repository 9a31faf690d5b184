"""`bench methods`: its config, the tasks and methods it knows, and the constants its parts share."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from splitft.errors import InvalidArgument

TASKS = ("classification", "causal_lm")
# The three methods across the split, then one-process baselines: TaskEdge's entry count with
# random or weight-only (|W|, no activation norm) positions, TinyTrain's Fisher potentials alone
# (no memory/MAC cost terms) at the same entry budget, full fine-tuning, and the head alone.
METHODS = (
    "lora",
    "taskedge",
    "tinytrain",
    "random",
    "magnitude",
    "tinytrain_nocost",
    "full",
    "head_only",
)
SPLIT_METHODS = ("lora", "taskedge", "tinytrain")
BUDGET_MATCHED = ("lora", "taskedge", "tinytrain", "random", "magnitude", "tinytrain_nocost")
BUDGET_TOLERANCE = 0.05  # a budget-matched method's entries within 5% of the matched budget
# TinyTrain's channel ratios in the bench: finer than the method's default (1, 1/2, 1/4, 1/8), so
# that a selection can land within BUDGET_TOLERANCE of the budget.
TINYTRAIN_RATIOS = (1.0, 0.75, 0.5, 0.375, 0.25, 0.1875, 0.125, 0.09375, 0.0625, 0.046875, 0.03125, 0.015625)
EDGE_NAMES = {"classification": "minilm", "causal_lm": "tiny-llama"}
RESULT_PREFIX = "SPLITFT_METHODS_RESULT "
WORKER_TIMEOUT_S = 3600
Batch = dict[str, torch.Tensor]
PAD_ID = 0  # causal_lm: one token per byte; 0 (NUL) never occurs in a docstring
MAX_BYTE_ID = 127  # the tiny models' vocabulary is 128: every non-ASCII byte becomes 127
HEAD_INIT_STD = 0.02
# AdamW peak learning rates (one-cycle schedule, weight decay 0, global-norm clipping at 1.0): the
# centre of each method's grid (`lr_multipliers`); the run picks from the grid on the VALIDATION
# split with the first seed, and reports the test split.
DEFAULT_CLS_LR = {
    "lora": 5e-3,
    "taskedge": 1e-2,
    "tinytrain": 1e-2,
    "random": 1e-2,
    "magnitude": 1e-2,
    "tinytrain_nocost": 1e-2,
    "full": 5e-5,
    "head_only": 3e-1,
}
DEFAULT_LM_LR = {m: 3e-2 for m in METHODS} | {"full": 3e-3}


@dataclass
class MethodsBenchConfig:
    """What `bench methods` compares: tasks, methods, budgets and each task's training recipe."""

    tasks: tuple[str, ...] = TASKS
    methods: tuple[str, ...] = METHODS
    seeds: tuple[int, ...] = (0, 1, 2)  # the learning rate is chosen with the first
    lr_multipliers: tuple[float, ...] = (1 / 3, 1.0, 3.0)  # x each method's cls_lr / lm_lr
    validation_fraction: float = 0.2  # of the train split, for every choice; held-out = test
    threads: int = 2  # torch threads in every worker and in the edge process
    max_per_class: int = 80  # stdlib docstrings per package (4 packages), 20% held out
    calibration_batches: int = 4  # TaskEdge's labels-free batches; TinyTrain's support set
    max_steps: int | None = None  # cap on optimizer steps per method (smoke runs)
    # classification: pretrained all-MiniLM-L6-v2 (6 blocks), split like the demo
    cls_model_dir: str | None = None  # None: the packaged all-MiniLM-L6-v2
    cls_budget_fraction: float = 0.005  # of all parameters: ~114k of 22.7M
    cls_epochs: int = 2
    cls_batch_size: int = 16
    cls_max_length: int = 64
    cls_device_layers: int = 2
    cls_head_layers: int = 1
    # causal_lm: Llama-style model from a config, next-byte prediction
    lm_layers: int = 4
    lm_hidden: int = 64
    # full-model pretraining steps (batch 16) on stdlib SOURCE CODE before the methods adapt the model
    # to docstrings; 0: adapt the random init itself
    lm_pretrain_steps: int = 150
    lm_budget_fraction: float = 0.05  # of all parameters: ~8.2k of 164k (the lm_head is 8,192)
    lm_epochs: int = 3
    lm_batch_size: int = 16
    lm_max_length: int = 96  # bytes per docstring
    lm_device_layers: int = 1
    lm_head_layers: int = 1
    cls_lr: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_CLS_LR))  # per method
    lm_lr: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_LM_LR))  # per method
    # run every method in THIS process, not one fresh worker each: saves a process start per run
    # (seconds of imports) for smoke runs, but the memory peaks then mix: quick mode only
    in_process: bool = False
    log_dir: str | None = None  # where the edge's log goes; None: a temporary directory

    @property
    def seed(self) -> int:
        """The first seed: the causal LM's init and pretraining, and the learning-rate choice."""
        return self.seeds[0]

    def __post_init__(self) -> None:
        self.tasks = tuple(self.tasks)
        self.methods = tuple(self.methods)
        self.seeds = tuple(self.seeds)
        self.lr_multipliers = tuple(self.lr_multipliers)
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or any(s < 0 for s in self.seeds):
            raise InvalidArgument(f"seeds must be distinct and >= 0, at least one, got {self.seeds}")
        if not self.lr_multipliers or any(not m > 0 for m in self.lr_multipliers):
            raise InvalidArgument(f"lr_multipliers must be > 0, at least one, got {self.lr_multipliers}")
        if not 0.0 < self.validation_fraction < 1.0:
            raise InvalidArgument("validation_fraction must be in (0, 1)")
        unknown = sorted(set(self.tasks) - set(TASKS)) + sorted(set(self.methods) - set(METHODS))
        if unknown or not self.tasks or not self.methods:
            raise InvalidArgument(f"tasks must be among {TASKS} and methods among {METHODS}, got {unknown}")
        self.cls_lr = {**DEFAULT_CLS_LR, **self.cls_lr}
        self.lm_lr = {**DEFAULT_LM_LR, **self.lm_lr}
        for name in ("cls_budget_fraction", "lm_budget_fraction"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise InvalidArgument(f"{name} must be in (0, 1]")
        positive = "threads max_per_class calibration_batches cls_epochs cls_batch_size".split()
        positive += "lm_epochs lm_batch_size lm_layers lm_hidden".split()
        if self.lm_pretrain_steps < 0:
            raise InvalidArgument("lm_pretrain_steps must be >= 0")
        if any(getattr(self, name) < 1 for name in positive) or (
            self.max_steps is not None and self.max_steps < 1
        ):
            raise InvalidArgument(f"{', '.join(positive)} and max_steps must be >= 1")
        if self.cls_max_length < 8 or self.lm_max_length < 8:
            raise InvalidArgument("max lengths must be >= 8")


# `bench methods --quick`: a tiny causal LM, few steps, one seed and one learning rate (tests, smoke).
QUICK: dict[str, object] = {
    "tasks": ("causal_lm",),
    "seeds": (0,),
    "lr_multipliers": (1.0,),
    "max_per_class": 12,
    "calibration_batches": 1,
    "max_steps": 4,
    "lm_layers": 3,
    "lm_hidden": 32,
    "lm_pretrain_steps": 5,
    "lm_epochs": 1,
    "lm_batch_size": 8,
    "lm_max_length": 32,
    "lm_device_layers": 1,
    "lm_head_layers": 1,
    "in_process": True,
}


def head_module(task: str) -> str:
    """The task head's module name: a new `classifier`, or the causal LM's `lm_head`."""
    return "classifier" if task == "classification" else "lm_head"
