"""`splitft bench methods`: LoRA vs TaskEdge vs TinyTrain vs head-only at equal trainable budgets.

Two tasks:

* `classification`: the demo's real task, pretrained all-MiniLM-L6-v2 classifying which stdlib
  package a docstring comes from (`splitft.data.stdlib_task`); metric: held-out accuracy.
* `causal_lm`: a Llama-style model built from a config (`splitft.testing.tiny`, 4 blocks, hidden 64,
  RANDOM init: no pretrained causal LM can be downloaded here), first pretrained for a few
  seconds, every weight, on stdlib SOURCE CODE (`lm_pretrain_steps`; 0 skips it), then adapted
  by each method to next-byte prediction of the docstrings, one token per byte (non-ASCII bytes
  become 127, 0 pads); metric: held-out loss (nats per byte).

Four methods, each in a fresh Python process (`python -m splitft.bench.methods --worker`) so
that their memory peaks do not mix:

* `lora` (split): `SplitModel` with a LoRA config on every Linear of the blocks (the modules
  TaskEdge scores) and the trunk adapter on; its rank is the one whose LoRA size is closest to
  the budget.
* `taskedge` (split): `SplitModel(method=TaskEdgeConfig(budget_fraction))` calibrated on a few
  labels-free batches; the budget IS `budget_fraction` x all parameters.
* `tinytrain` (split): `SplitModel(method=TinyTrainConfig(memory_budget, inf))` calibrated on a
  labelled support set (the labels stay on the device; the edge measures its layers from the
  gradients of the backward), with the memory budget whose selection's size is closest to the
  budget. Finding that memory budget needs every layer's potentials; the worker measures them on
  the whole model BEFORE its memory baseline and frees it (a benchmark artefact to match budgets;
  a real device is given its budget).
* `head_only` (NOT split): the whole model in one process, everything frozen but the task head
  (`classifier` / `lm_head`); its size is what it is, not matched to the budget.

A classification head the checkpoint lacks trains in every method, and starts from the same
seeded values in every method, so `before` is the same for all four. The budget counts what a
method adds on top of it. Device memory is the worker's peak RSS (`VmHWM`, reset through
`/proc/self/clear_refs` once libraries and data are loaded) minus its RSS at that reset: on a
split run the device's share only (the edge is another process, shared by the split runs, and
not measured); on an unsplit run the whole model. Bytes on the wire are serialized gRPC messages
both ways (`SplitModel.stats`), calibration and evaluation included.
"""

from __future__ import annotations

import json
import logging
import math
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from splitft.bench.peak_rss import peak_kib, release_freed_memory, reset_peak
from splitft.bench.worker import run_worker
from splitft.errors import InvalidArgument

logger = logging.getLogger(__name__)

TASKS = ("classification", "causal_lm")
METHODS = ("lora", "taskedge", "tinytrain", "head_only")
SPLIT_METHODS = ("lora", "taskedge", "tinytrain")
BUDGET_MATCHED = ("lora", "taskedge", "tinytrain")
EDGE_NAMES = {"classification": "minilm", "causal_lm": "tiny-llama"}
RESULT_PREFIX = "SPLITFT_METHODS_RESULT "
WORKER_TIMEOUT_S = 3600
Batch = dict[str, torch.Tensor]
PAD_ID = 0  # causal_lm: one token per byte; 0 (NUL) never occurs in a docstring
MAX_BYTE_ID = 127  # the tiny models' vocabulary is 128: every non-ASCII byte becomes 127
HEAD_INIT_STD = 0.02
# AdamW peak learning rates (one-cycle schedule, weight decay 0, global-norm clipping at 1.0): per
# method the best of a small grid (about 3e-3 .. 3e-1) on the default run's held-out set.
DEFAULT_CLS_LR = {"lora": 5e-3, "taskedge": 1e-2, "tinytrain": 1e-2, "head_only": 3e-1}
DEFAULT_LM_LR = {"lora": 3e-2, "taskedge": 3e-2, "tinytrain": 3e-2, "head_only": 3e-2}


@dataclass
class MethodsBenchConfig:
    tasks: tuple[str, ...] = TASKS
    methods: tuple[str, ...] = METHODS
    seed: int = 0
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
    log_dir: str | None = None  # where the edge's log goes; None: a temporary directory

    def __post_init__(self) -> None:
        self.tasks = tuple(self.tasks)
        self.methods = tuple(self.methods)
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


# ---------------------------------------------------------------------------------------------
# The parent: plan the budgets, start one edge, run one worker per (task, method), report.


def run_methods_bench(config: MethodsBenchConfig) -> str:
    """Run the comparison and return its JSON report."""
    from splitft.data.stdlib_task import build_stdlib_task
    from splitft.demo.sdk import default_model_dir
    from splitft.local.launch import EdgeProcess

    started = time.perf_counter()
    text_task = build_stdlib_task(max_per_class=config.max_per_class)
    data: dict[str, Any] = {
        "labels": list(text_task.labels),
        "train": [[e.text, e.label] for e in text_task.train],
        "heldout": [[e.text, e.label] for e in text_task.heldout],
    }
    with tempfile.TemporaryDirectory(prefix="splitft-bench-methods-") as tmp:
        model_dirs: dict[str, Path] = {}
        pretrain: dict[str, Any] | None = None
        if "classification" in config.tasks:
            model_dirs["classification"] = Path(config.cls_model_dir or default_model_dir())
        if "causal_lm" in config.tasks:
            model_dirs["causal_lm"], pretrain = pretrained_tiny_llama(
                Path(tmp) / "tiny-llama",
                layers=config.lm_layers,
                hidden=config.lm_hidden,
                steps=config.lm_pretrain_steps,
                max_length=config.lm_max_length,
                threads=config.threads,
                seed=config.seed,
            )
        plans = {task: _plan(task, model_dirs[task], len(data["labels"]), config) for task in config.tasks}
        log_dir = Path(config.log_dir) if config.log_dir else Path(tmp)
        log_dir.mkdir(parents=True, exist_ok=True)
        needs_edge = any(m in SPLIT_METHODS for m in config.methods)
        edge_args = [f"{EDGE_NAMES[t]}={model_dirs[t]}" for t in config.tasks]
        edge = EdgeProcess(edge_args, threads=config.threads, log_path=str(log_dir / "edge.log"))
        results: dict[str, dict[str, Any]] = {task: {} for task in config.tasks}
        try:
            if needs_edge:
                edge.start()
            for task in config.tasks:
                for method in config.methods:
                    spec = _worker_spec(task, method, plans[task], data, config, edge.address)
                    logger.info("bench methods: %s / %s", task, method)
                    results[task][method] = _run_worker(spec)
        finally:
            if needs_edge:
                edge.stop()
    report = {
        "benchmark": "methods",
        "config": asdict(config),
        "data": {
            "source": "stdlib docstrings (splitft.data.stdlib_task)",
            "packages": data["labels"],
            "train_examples": len(data["train"]),
            "heldout_examples": len(data["heldout"]),
        },
        "tasks": {task: {**_task_summary(plans[task]), "methods": results[task]} for task in config.tasks},
        "lm_pretraining": pretrain,
        "notes": [
            "split=false: head_only trains the head in one process; it loads the WHOLE model, so its "
            "device memory includes the trunk.",
            "split=true: device memory is the device process only; the edge process is shared and not "
            "measured. Bytes are serialized gRPC messages both ways, calibration and evaluation included.",
            "causal_lm uses a Llama-style model built from a config with RANDOM init (nothing pretrained "
            "can be downloaded here), pretrained in this run for lm_pretrain_steps full-model steps on "
            "stdlib source code (see lm_pretraining); the methods adapt that small model from code to "
            "docstring prose. With lm_pretrain_steps=0 they adapt the random init itself.",
            "Learning rates are per method, the best of a small grid on the default run's held-out "
            "set (config cls_lr / lm_lr); held-out classification has 64 examples (1.6% each).",
            "head_only is not budget-matched: it trains exactly the task head.",
        ],
        "seconds": round(time.perf_counter() - started, 1),
    }
    return json.dumps(report, indent=2)


PRETRAIN_MODULES = (
    "argparse",
    "collections",
    "dataclasses",
    "functools",
    "inspect",
    "json",
    "pathlib",
    "shutil",
    "string",
    "tempfile",
    "textwrap",
    "typing",
)  # stdlib modules whose SOURCE pretrains the causal LM; none is one of the task's packages
PRETRAIN_BATCH = 16
PRETRAIN_LR = 3e-3


def pretrain_corpus(max_length: int) -> list[str]:
    """`max_length`-character chunks of the source code of `PRETRAIN_MODULES` (this Python's stdlib)."""
    import importlib
    import inspect

    source = "".join(inspect.getsource(importlib.import_module(name)) for name in PRETRAIN_MODULES)
    return [source[i : i + max_length] for i in range(0, len(source) - max_length, max_length)]


def pretrained_tiny_llama(
    directory: Path, *, layers: int, hidden: int, steps: int, max_length: int, threads: int, seed: int
) -> tuple[Path, dict[str, Any] | None]:
    """A Llama-style model from a config saved to `directory`, then (`steps` > 0) every weight
    trained on stdlib source code and saved in place; returns its path and the pretraining report.

    Gives a causal-LM task a base model that knows bytes of Python-ish text, so that fine-tuning
    ADAPTS it (code -> docstring prose) instead of fitting a random network. The caller's RNG state
    and torch thread count stay as they were.
    """
    from splitft.testing.tiny import save_tiny_model

    caller_threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        try:
            tiny = save_tiny_model("llama", directory, layers=layers, hidden=hidden, seed=seed)
            report = _pretrain(tiny.path, steps, max_length, threads, seed) if steps else None
        finally:
            torch.set_num_threads(caller_threads)
    return tiny.path, report


def _pretrain(path: Path, steps: int, max_length: int, threads: int, seed: int) -> dict[str, Any]:
    import random

    from transformers import LlamaForCausalLM

    started = time.perf_counter()
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    chunks = pretrain_corpus(max_length)
    model = LlamaForCausalLM.from_pretrained(str(path), local_files_only=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=PRETRAIN_LR, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=PRETRAIN_LR, total_steps=steps, pct_start=0.1
    )
    rng = random.Random(seed)
    losses: list[float] = []
    model.train()
    for _ in range(steps):
        loss = model(**encode_bytes(rng.sample(chunks, PRETRAIN_BATCH), max_length)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
        losses.append(loss.item())
    model.save_pretrained(str(path))
    return {
        "corpus": f"source code of stdlib modules {list(PRETRAIN_MODULES)}, {len(chunks)} chunks",
        "steps": steps,
        "batch": PRETRAIN_BATCH,
        "lr": PRETRAIN_LR,
        "train_loss_first": round(losses[0], 4),
        "train_loss_last_10": round(sum(losses[-10:]) / len(losses[-10:]), 4),
        "seconds": round(time.perf_counter() - started, 1),
    }


@dataclass
class _Plan:
    task: str
    model_dir: str
    edge_model: str
    num_labels: int | None
    total_parameters: int
    budget_fraction: float
    budget: int  # trainable entries each budget-matched method aims at (besides a new head)
    targets: list[str]  # LoRA target modules: every Linear in the blocks (what TaskEdge scores)
    lora_rank: int
    lora_per_rank: int
    head_parameters: int
    new_head: bool
    device_layers: int
    head_layers: int
    num_layers: int


def _plan(task: str, model_dir: Path, num_labels: int, config: MethodsBenchConfig) -> _Plan:
    """Budget, LoRA rank and target modules from the model's shapes (a `meta` build)."""
    from splitft.methods.common import count_parameters, find_target_modules, linear_shape
    from splitft.model.loading import build_meta_model, read_config

    hf_config, family = read_config(model_dir)
    overrides: dict[str, Any] = {"num_labels": num_labels} if task == "classification" else {}
    meta = build_meta_model(hf_config, family, **overrides)
    total = count_parameters(meta)
    fraction = config.cls_budget_fraction if task == "classification" else config.lm_budget_fraction
    budget = max(1, math.floor(fraction * total))
    names = find_target_modules(meta)
    per_rank = sum(sum(linear_shape(meta.get_submodule(n))) for n in names)
    prefix = re.compile(rf"^{re.escape(family.blocks_path)}\.\d+\.")
    targets = sorted({prefix.sub("", n) for n in names})
    head = _head_module(task)
    head_params = sum(p.numel() for p in meta.get_submodule(head).parameters())
    layers = int(hf_config.num_hidden_layers)
    return _Plan(
        task=task,
        model_dir=str(model_dir),
        edge_model=EDGE_NAMES[task],
        num_labels=num_labels if task == "classification" else None,
        total_parameters=total,
        budget_fraction=fraction,
        budget=budget,
        targets=targets,
        lora_rank=max(1, round(budget / per_rank)),
        lora_per_rank=per_rank,
        head_parameters=head_params,
        new_head=task == "classification",
        device_layers=config.cls_device_layers if task == "classification" else config.lm_device_layers,
        head_layers=config.cls_head_layers if task == "classification" else config.lm_head_layers,
        num_layers=layers,
    )


def _head_module(task: str) -> str:
    return "classifier" if task == "classification" else "lm_head"


def _task_summary(plan: _Plan) -> dict[str, Any]:
    if plan.task == "classification":
        what = "pretrained all-MiniLM-L6-v2: which stdlib package wrote a docstring (sequence classification)"
        metric = "heldout_accuracy"
    else:
        what = (
            "Llama-style model from a config (random init, then pretrained here on stdlib source code "
            "unless lm_pretrain_steps=0): next-byte prediction of stdlib docstrings"
        )
        metric = "heldout_loss"
    return {
        "description": what,
        "metric": metric,
        "model_dir": plan.model_dir,
        "total_parameters": plan.total_parameters,
        "budget_fraction": plan.budget_fraction,
        "budget_parameters": plan.budget,
        "lora": {"rank": plan.lora_rank, "per_rank": plan.lora_per_rank, "target_modules": plan.targets},
        "head_parameters": plan.head_parameters,
        "head_is_new": plan.new_head,
        "split": {
            "num_layers": plan.num_layers,
            "device_layers": plan.device_layers,
            "head_layers": plan.head_layers,
            "trunk_blocks": [plan.device_layers, plan.num_layers - plan.head_layers],
        },
    }


def _worker_spec(
    task: str, method: str, plan: _Plan, data: dict[str, Any], config: MethodsBenchConfig, address: str
) -> dict[str, Any]:
    classification = task == "classification"
    return {
        "task": task,
        "method": method,
        "plan": asdict(plan),
        "edge_address": address,
        "seed": config.seed,
        "threads": config.threads,
        "lr": (config.cls_lr if classification else config.lm_lr)[method],
        "epochs": config.cls_epochs if classification else config.lm_epochs,
        "batch_size": config.cls_batch_size if classification else config.lm_batch_size,
        "max_length": config.cls_max_length if classification else config.lm_max_length,
        "max_steps": config.max_steps,
        "calibration_batches": config.calibration_batches,
        "data": data,
    }


def _run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    started = time.perf_counter()
    result = run_worker(
        "splitft.bench.methods",
        spec,
        prefix=RESULT_PREFIX,
        label=f"bench worker {spec['task']}/{spec['method']}",
        timeout=WORKER_TIMEOUT_S,
    )
    result["process_seconds"] = round(time.perf_counter() - started, 1)
    return result


def markdown_table(report_json: str | dict[str, Any]) -> str:
    """The report's figures as one Markdown table (for docs and the terminal)."""
    report = json.loads(report_json) if isinstance(report_json, str) else report_json
    head = (
        "| task | method | split | trainable device + trunk (budget) | metric before -> after "
        "| device peak MiB (train) | wire MB up / down | seconds |"
    )
    rows = [head, "|" + " --- |" * 8]
    for task, info in report["tasks"].items():
        metric = info["metric"]
        for method, r in info["methods"].items():
            t = r["trainable"]
            before, after = r["metric"]["before"], r["metric"]["after"]
            fmt = "{:.1%}" if metric == "heldout_accuracy" else "{:.3f}"
            wire = r["wire"]
            wire_text = (
                f"{wire['bytes_sent'] / 1e6:.1f} / {wire['bytes_received'] / 1e6:.1f}" if wire else "-"
            )
            budget = f"{t['method']:,} of {info['budget_parameters']:,}" if method != "head_only" else "head"
            rows.append(
                f"| {task} | {method} | {'yes' if r['split'] else 'no'} "
                f"| {t['device']:,} + {t['trunk']:,} ({budget}) "
                f"| {metric.replace('heldout_', '')} {fmt.format(before)} -> {fmt.format(after)} "
                f"| {r['memory']['train_peak_delta_mib']:.0f} | {wire_text} | {r['seconds']:.1f} |"
            )
    return "\n".join(rows)


# ---------------------------------------------------------------------------------------------
# The worker: one method on one task, in its own process.


@dataclass
class _Data:
    train_epochs: list[list[Batch]]
    heldout: list[Batch]
    calibration: list[Batch]


def encode_bytes(texts: list[str], max_length: int) -> Batch:
    rows = [[min(b, MAX_BYTE_ID) for b in text.encode()[:max_length]] for text in texts]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def _prepare_data(spec: dict[str, Any]) -> _Data:
    from splitft.data.stdlib_task import Example, batches

    train = [Example(t, int(y)) for t, y in spec["data"]["train"]]
    heldout = [Example(t, int(y)) for t, y in spec["data"]["heldout"]]
    size, max_length = int(spec["batch_size"]), int(spec["max_length"])
    if spec["task"] == "classification":
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(spec["plan"]["model_dir"], local_files_only=True)

        def encode(texts: list[str], labels: list[int]) -> Batch:
            enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            return {
                "input_ids": enc["input_ids"],
                "attention_mask": enc["attention_mask"],
                "labels": torch.tensor(labels),
            }

    else:

        def encode(texts: list[str], labels: list[int]) -> Batch:
            return encode_bytes(texts, max_length)

    seed = int(spec["seed"])
    epochs = [
        [encode(t, y) for t, y in batches(train, size, shuffle_seed=seed + epoch)]
        for epoch in range(int(spec["epochs"]))
    ]
    if spec["max_steps"] is not None:
        epochs = _cap_steps(epochs, int(spec["max_steps"]))
    held = [encode(t, y) for t, y in batches(heldout, 64)]
    calibration = [encode(t, y) for t, y in batches(train, size, shuffle_seed=seed + 10_000)]
    return _Data(epochs, held, calibration[: int(spec["calibration_batches"])])


def _cap_steps(epochs: list[list[Batch]], steps: int) -> list[list[Batch]]:
    out: list[list[Batch]] = []
    for epoch in epochs:
        if steps <= 0:
            break
        out.append(epoch[:steps])
        steps -= len(out[-1])
    return out


@dataclass
class _Built:
    model: nn.Module
    split: bool
    selection: dict[str, Any]
    close: Callable[[], None]
    stats: Callable[[], tuple[int, int]] | None  # (bytes sent, bytes received) so far
    trunk_trainable: Callable[[], int]


def _reset_head(model: nn.Module, plan: dict[str, Any], seed: int) -> None:
    """Give a new classification head the same seeded start in every method (and peft's copy of it)."""
    if not plan["new_head"]:
        return
    hits = 0
    generator = torch.Generator().manual_seed(seed + 7919)
    weight: torch.Tensor | None = None
    with torch.no_grad():
        for name, param in model.named_parameters():
            if not re.search(r"(^|\.)classifier\.(.+\.)?(weight|bias)$", name):
                continue
            if name.endswith("bias"):
                param.zero_()
            else:
                if weight is None:
                    weight = torch.randn(param.shape, generator=generator) * HEAD_INIT_STD
                param.copy_(weight)
            hits += 1
    if not hits:
        raise RuntimeError("no classifier parameters found to initialise")


def _edge_connection(spec: dict[str, Any]) -> Any:
    from device_client import EdgeConnection

    return EdgeConnection(spec["edge_address"], insecure=True)


def _split_model(spec: dict[str, Any], method: Any) -> Any:
    from device_client import SplitModel

    plan = spec["plan"]
    conn = _edge_connection(spec)
    torch.manual_seed(int(spec["seed"]))
    overrides = {"num_labels": plan["num_labels"]} if plan["num_labels"] else None
    model = SplitModel.from_pretrained(
        plan["model_dir"],
        edge=conn,
        model=plan["edge_model"],
        device_layers=plan["device_layers"],
        head_layers=plan["head_layers"],
        method=method,
        trunk_lora=True,
        codec="raw",
        seed=int(spec["seed"]),
        config_overrides=overrides,
    )
    return model, conn


def _build_lora(spec: dict[str, Any], data: _Data) -> _Built:
    from peft import LoraConfig

    plan = spec["plan"]
    rank = int(plan["lora_rank"])
    task_type = "SEQ_CLS" if spec["task"] == "classification" else None
    lora = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=plan["targets"], task_type=task_type)
    model, conn = _split_model(spec, lora)
    _reset_head(model, plan, int(spec["seed"]))
    return _split_built(model, conn, {"rank": rank, "lora_alpha": 2 * rank})


def _split_built(model: Any, conn: Any, details: dict[str, Any]) -> _Built:
    """A method that runs across the split: wire bytes and trunk parameters come from the session."""

    def close() -> None:
        model.close()
        conn.close()

    return _Built(
        model,
        True,
        details,
        close,
        lambda: (model.stats.bytes_sent, model.stats.bytes_received),
        lambda: int(model.trainable_parameters()["trunk"]),
    )


def _build_taskedge(spec: dict[str, Any], data: _Data) -> _Built:
    from splitft.methods.taskedge import TaskEdgeConfig

    plan = spec["plan"]
    model, conn = _split_model(spec, TaskEdgeConfig(budget_fraction=plan["budget_fraction"]))
    _reset_head(model, plan, int(spec["seed"]))
    selected = model.calibrate(data.calibration)  # labels are dropped before anything runs
    return _split_built(
        model, conn, {"k_per_row": selected["k_per_row"], "calibration_batches": len(data.calibration)}
    )


def _whole_model(spec: dict[str, Any]) -> nn.Module:
    from splitft.model.loading import read_config

    plan = spec["plan"]
    hf_config, family = read_config(plan["model_dir"])
    overrides = {"num_labels": plan["num_labels"]} if plan["num_labels"] else {}
    torch.manual_seed(int(spec["seed"]))
    model_class: Any = family.model_class(hf_config)
    model: nn.Module = model_class.from_pretrained(plan["model_dir"], local_files_only=True, **overrides)
    _reset_head(model, plan, int(spec["seed"]))
    return model


def _trunk_range(plan: dict[str, Any]) -> range:
    return range(int(plan["device_layers"]), int(plan["num_layers"]) - int(plan["head_layers"]))


def _block_of(name: str) -> int | None:
    match = re.search(r"\.(\d+)\.", name)
    return int(match.group(1)) if match else None


def size_tinytrain_budget(model: nn.Module, support: list[Any], budget: int) -> tuple[float, int]:
    """The memory budget (bytes, no compute limit) whose TinyTrain selection is closest to `budget`
    trainable entries (log scale), and that selection's size. Scans a geometric grid."""
    from splitft.methods.common import find_target_modules
    from splitft.methods.tinytrain import TinyTrainConfig, fisher_pass, layer_costs, select_tinytrain

    names = find_target_modules(model)
    measured = fisher_pass(model, support, None, names)
    costs = layer_costs(model, measured.order, measured.tokens)
    lowest = min(c.memory_bytes(1, 4) for c in costs.values())
    highest = sum(c.memory_bytes(c.out_features, 4) for c in costs.values())
    best: tuple[float, float, int] | None = None  # (distance, memory budget, entries)
    points = 160
    for i in range(points + 1):
        memory = lowest * (highest / lowest) ** (i / points)
        selection = select_tinytrain(measured.potentials, costs, TinyTrainConfig(memory, math.inf))
        entries = sum(int(m.sum()) for m in selection.masks.values())
        if entries == 0:
            continue
        distance = abs(math.log(entries / budget))
        if best is None or distance < best[0]:
            best = (distance, memory, entries)
    if best is None:
        raise RuntimeError("TinyTrain selected nothing at any memory budget")
    return best[1], best[2]


def _size_tinytrain(spec: dict[str, Any], data: _Data) -> dict[str, Any]:
    """Before the memory baseline: the memory budget matching the entry budget (whole-model pass)."""
    model = _whole_model(spec)
    memory, sized = size_tinytrain_budget(model, data.calibration, int(spec["plan"]["budget"]))
    del model
    return {**spec, "tinytrain_memory_budget": memory, "tinytrain_sized_entries": sized}


def _build_tinytrain(spec: dict[str, Any], data: _Data) -> _Built:
    from splitft.methods.tinytrain import TinyTrainConfig

    plan = spec["plan"]
    memory = float(spec["tinytrain_memory_budget"])
    model, conn = _split_model(spec, TinyTrainConfig(memory, math.inf))
    _reset_head(model, plan, int(spec["seed"]))
    model.calibrate(data.calibration)  # labelled: the loss is computed on the device
    selection = model.selection_report
    assert selection is not None
    trunk = _trunk_range(plan)
    in_trunk = sum(int(m.sum()) for n, m in selection.masks.items() if _block_of(n) in trunk)
    info = {
        "memory_budget_bytes": round(memory),
        "selected_memory_bytes": selection.memory_bytes,
        "selected_macs": selection.macs,
        "layers": {n: selection.ratios[n] for n in selection.masks},
        "entries_in_trunk": in_trunk,
        "support_batches": len(data.calibration),
    }
    if int(spec["tinytrain_sized_entries"]) != sum(int(m.sum()) for m in selection.masks.values()):
        raise RuntimeError("the split TinyTrain selection differs from the whole-model one it was sized on")
    return _split_built(model, conn, info)


def _build_head_only(spec: dict[str, Any], data: _Data) -> _Built:
    model = _whole_model(spec)
    model.requires_grad_(False)
    model.get_submodule(_head_module(spec["task"])).requires_grad_(True)
    return _Built(model, False, {"module": _head_module(spec["task"])}, lambda: None, None, lambda: 0)


BUILDERS: dict[str, Callable[[dict[str, Any], _Data], _Built]] = {
    "lora": _build_lora,
    "taskedge": _build_taskedge,
    "tinytrain": _build_tinytrain,
    "head_only": _build_head_only,
}


@torch.no_grad()
def _evaluate(model: nn.Module, batches: list[Batch], task: str) -> dict[str, float]:
    model.eval()
    loss_sum, weight, correct, count = 0.0, 0, 0, 0
    for batch in batches:
        out = model(**batch)
        labels = batch["labels"]
        if task == "classification":
            n = labels.numel()
            correct += int((out.logits.argmax(-1) == labels).sum())
            count += n
        else:
            n = int((labels[:, 1:] != -100).sum())  # HF shifts: token t predicts t + 1
        loss_sum += float(out.loss) * n
        weight += n
    result = {"loss": loss_sum / weight}
    if task == "classification":
        result["accuracy"] = correct / count
    return result


def _batches_of(epochs: list[list[Batch]]) -> Iterator[Batch]:
    for epoch in epochs:
        yield from epoch


def _train(model: nn.Module, optimizer: Any, epochs: list[list[Batch]], lr: float) -> list[float]:
    steps = sum(len(e) for e in epochs)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    losses: list[float] = []
    model.train()
    for batch in _batches_of(epochs):
        loss = model(**batch).loss
        loss.backward()
        if hasattr(optimizer, "clip_grad_norm_"):  # the split optimizer clips across both sides
            optimizer.clip_grad_norm_(1.0)
        else:
            torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
        losses.append(float(loss))
    return losses


def _make_optimizer(built: _Built, lr: float) -> Any:
    configure = getattr(built.model, "configure_optimizer", None)
    if configure is not None:  # a SplitModel: one optimizer that also steps the trunk's on the edge
        return configure(torch.optim.AdamW, lr=lr, weight_decay=0.0)
    params = [p for p in built.model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.0)


def _preload() -> None:
    """Import every library a method uses and run one tiny training step, so the peak measured
    after this is the method's own (about 190 MiB of imports and runtime otherwise land in it)."""
    import peft  # noqa: F401
    from transformers import BertForSequenceClassification, LlamaForCausalLM  # noqa: F401

    import device_client  # noqa: F401  (the SDK, grpc and protobuf)
    import splitft.methods  # noqa: F401

    layer = nn.Linear(32, 32)
    optimizer = torch.optim.AdamW(layer.parameters())
    layer(torch.randn(4, 32)).sum().backward()
    optimizer.step()


def run_method(spec: dict[str, Any]) -> dict[str, Any]:
    """One method on one task in THIS process: build, evaluate, train, evaluate; the figures."""
    torch.set_num_threads(int(spec["threads"]))
    torch.manual_seed(int(spec["seed"]))
    task, method, plan = spec["task"], spec["method"], spec["plan"]
    data = _prepare_data(spec)
    _preload()
    if method == "tinytrain":
        spec = _size_tinytrain(spec, data)
    release_freed_memory()
    baseline_kib, reset = reset_peak()
    peaks: dict[str, int] = {}
    started = time.perf_counter()
    built = BUILDERS[method](spec, data)
    try:
        setup_seconds = time.perf_counter() - started
        before = _evaluate(built.model, data.heldout, task)
        peaks["setup_and_eval"] = peak_kib()
        release_freed_memory()
        reset_peak()
        wire_before_train = built.stats() if built.stats else None
        optimizer = _make_optimizer(built, float(spec["lr"]))
        train_started = time.perf_counter()
        losses = _train(built.model, optimizer, data.train_epochs, float(spec["lr"]))
        train_seconds = time.perf_counter() - train_started
        peaks["train"] = peak_kib()
        wire_after_train = built.stats() if built.stats else None
        after = _evaluate(built.model, data.heldout, task)
        peaks["eval_after"] = peak_kib()
        device = sum(p.numel() for p in built.model.parameters() if p.requires_grad)
        trunk = built.trunk_trainable()
        wire_final = built.stats() if built.stats else None
    finally:
        built.close()
    seconds = time.perf_counter() - started
    metric = "accuracy" if task == "classification" else "loss"
    head = int(plan["head_parameters"]) if plan["new_head"] or method == "head_only" else 0
    wire: dict[str, Any] | None = None
    if wire_final is not None and wire_before_train is not None and wire_after_train is not None:
        train_bytes = sum(wire_after_train) - sum(wire_before_train)
        wire = {
            "bytes_sent": wire_final[0],
            "bytes_received": wire_final[1],
            "train_bytes_per_step": round(train_bytes / max(1, len(losses))),
        }
    return {
        "task": task,
        "method": method,
        "split": method in SPLIT_METHODS,
        "budget_matched": method in BUDGET_MATCHED,
        "metric": {"name": f"heldout_{metric}", "before": before[metric], "after": after[metric]},
        "heldout_before": before,
        "heldout_after": after,
        "train_loss_first": losses[0],
        "train_loss_last_10": sum(losses[-10:]) / len(losses[-10:]),
        "steps": len(losses),
        "lr": float(spec["lr"]),
        "trainable": {
            "device": device,
            "trunk": trunk,
            "total": device + trunk,
            "head": head,
            "method": device + trunk - (head if method != "head_only" else 0),
        },
        "selection": built.selection,
        "memory": {
            "baseline_rss_mib": round(baseline_kib / 1024, 1),
            # peak RSS minus the baseline (libraries and data loaded, no model yet), per phase
            "train_peak_delta_mib": round((peaks["train"] - baseline_kib) / 1024, 1),
            "peak_delta_mib": round((max(peaks.values()) - baseline_kib) / 1024, 1),
            "phase_peak_delta_mib": {k: round((v - baseline_kib) / 1024, 1) for k, v in peaks.items()},
            "peak_was_reset": reset,
        },
        "wire": wire,
        "seconds": round(seconds, 2),
        "setup_seconds": round(setup_seconds, 2),
        "train_seconds": round(train_seconds, 2),
    }


def _worker_main() -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    spec = json.loads(sys.stdin.read())
    result = run_method(spec)
    sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m splitft.bench.methods [--markdown]`: the default run; `--worker`: one method."""
    args = sys.argv[1:] if argv is None else argv
    if "--worker" in args:
        return _worker_main()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    report = run_methods_bench(MethodsBenchConfig())
    sys.stdout.write(report + "\n")
    if "--markdown" in args:
        sys.stdout.write("\n" + markdown_table(report) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
