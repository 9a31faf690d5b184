"""`bench methods` in the parent process: plan the budgets, start one edge, run one worker per
(task, method), report."""

from __future__ import annotations

import json
import logging
import math
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from splitft.bench.methods.budgets import lora_shape, taskedge_fraction, taskedge_k
from splitft.bench.methods.config import (
    EDGE_NAMES,
    QUICK,
    RESULT_PREFIX,
    SPLIT_METHODS,
    WORKER_TIMEOUT_S,
    MethodsBenchConfig,
    head_module,
)
from splitft.bench.methods.pretrain import pretrained_tiny_llama
from splitft.bench.methods.report import markdown_table, summarize_method, validation_key
from splitft.bench.methods.worker import run_method, worker_main
from splitft.bench.worker import run_worker
from splitft.data.stdlib_task import build_stdlib_task, validation_split
from splitft.demo.sdk import default_model_dir
from splitft.local.launch import EdgeProcess
from splitft.methods.common import count_parameters, find_target_modules, linear_shape
from splitft.model.loading import build_meta_model, read_config

logger = logging.getLogger(__name__)

NOTES = (
    "split=false: head_only trains the head in one process; it loads the WHOLE model, so its "
    "device memory includes the trunk.",
    "split=true: device memory is the device process only; the edge process is shared and not "
    "measured. Bytes are serialized gRPC messages both ways, calibration and evaluation included.",
    "causal_lm uses a Llama-style model built from a config with RANDOM init (nothing pretrained "
    "can be downloaded here), pretrained in this run for lm_pretrain_steps full-model steps on "
    "stdlib source code (see lm_pretraining); the methods adapt that small model from code to "
    "docstring prose. With lm_pretrain_steps=0 they adapt the random init itself.",
    "Splits: the stdlib task's held-out split is the TEST split (reported); validation_fraction of "
    "its train split is the VALIDATION split, on which each method's learning rate is chosen "
    "(grid lr_multipliers x cls_lr / lm_lr, first seed); the other seeds rerun the chosen rate.",
    "Budget: the matched budget is TaskEdge's k x rows closest to budget_fraction x all parameters; "
    "budget.ratio is each method's trainable entries (besides a new head) over it.",
    "random, magnitude, tinytrain_nocost, full and head_only run in one process (split=false): "
    "their device memory includes the whole model. full and head_only are not budget-matched.",
    "in_process=true (--quick): every method ran in the parent process, so memory peaks mix.",
)


def run_methods_bench(config: MethodsBenchConfig) -> str:
    """Run the comparison and return its JSON report."""
    started = time.perf_counter()
    data = _task_data(config)
    with tempfile.TemporaryDirectory(prefix="splitft-bench-methods-") as tmp:
        model_dirs, pretrain = _model_dirs(config, Path(tmp))
        plans = {task: _plan(task, model_dirs[task], len(data["labels"]), config) for task in config.tasks}
        log_dir = Path(config.log_dir) if config.log_dir else Path(tmp)
        log_dir.mkdir(parents=True, exist_ok=True)
        results = _run_workers(config, plans, data, model_dirs, log_dir)
    report = {
        "benchmark": "methods",
        "config": asdict(config),
        "data": {
            "source": "stdlib docstrings (splitft.data.stdlib_task)",
            "packages": data["labels"],
            "train_examples": len(data["train"]),
            "validation_examples": len(data["validation"]),
            "test_examples": len(data["test"]),
        },
        "tasks": {task: {**_task_summary(plans[task]), "methods": results[task]} for task in config.tasks},
        "lm_pretraining": pretrain,
        "notes": list(NOTES),
        "seconds": round(time.perf_counter() - started, 1),
    }
    return json.dumps(report, indent=2)


def _task_data(config: MethodsBenchConfig) -> dict[str, Any]:
    """The stdlib docstring task as JSON-ready lists, for the workers' specs."""
    text_task = build_stdlib_task(max_per_class=config.max_per_class)
    train, validation = validation_split(text_task.train, config.validation_fraction)
    return {
        "labels": list(text_task.labels),
        "train": [[e.text, e.label] for e in train],
        "validation": [[e.text, e.label] for e in validation],
        "test": [[e.text, e.label] for e in text_task.heldout],
    }


def _model_dirs(config: MethodsBenchConfig, tmp: Path) -> tuple[dict[str, Path], dict[str, Any] | None]:
    """Each task's model directory (the causal LM pretrained here, in `tmp`) and the pretraining report."""
    model_dirs: dict[str, Path] = {}
    pretrain: dict[str, Any] | None = None
    if "classification" in config.tasks:
        model_dirs["classification"] = Path(config.cls_model_dir or default_model_dir())
    if "causal_lm" in config.tasks:
        model_dirs["causal_lm"], pretrain = pretrained_tiny_llama(tmp / "tiny-llama", config)
    return model_dirs, pretrain


def _run_workers(
    config: MethodsBenchConfig,
    plans: dict[str, _Plan],
    data: dict[str, Any],
    model_dirs: dict[str, Path],
    log_dir: Path,
) -> dict[str, dict[str, Any]]:
    """One worker per (task, method), in turn; the split methods share one edge process."""
    needs_edge = any(m in SPLIT_METHODS for m in config.methods)
    edge_args = [f"{EDGE_NAMES[t]}={model_dirs[t]}" for t in config.tasks]
    edge = EdgeProcess(edge_args, threads=config.threads, log_path=str(log_dir / "edge.log"))
    results: dict[str, dict[str, Any]] = {task: {} for task in config.tasks}
    try:
        if needs_edge:
            edge.start()
        for task in config.tasks:
            for method in config.methods:
                results[task][method] = _run_method(task, method, plans[task], data, config, edge.address)
    finally:
        if needs_edge:
            edge.stop()
    return results


@dataclass
class _Plan:
    task: str
    model_dir: str
    edge_model: str
    num_labels: int | None
    total_parameters: int
    budget_fraction: float
    nominal_budget: int  # floor(budget_fraction x all parameters)
    budget: int  # the matched budget: TaskEdge's k x rows closest to the nominal one
    taskedge_k: int
    taskedge_fraction: float  # what TaskEdgeConfig gets so that its budget is exactly `budget`
    targets: list[str]  # every Linear in the blocks (what TaskEdge scores), as suffixes
    lora_rank: int
    lora_targets: list[str]  # the subset of `targets` that meets the budget at `lora_rank`
    lora_parameters: int
    head_parameters: int
    new_head: bool
    device_layers: int
    head_layers: int
    num_layers: int


def _plan(task: str, model_dir: Path, num_labels: int, config: MethodsBenchConfig) -> _Plan:
    """Budgets, LoRA rank and target modules from the model's shapes (a `meta` build)."""
    hf_config, family = read_config(model_dir)
    overrides: dict[str, Any] = {"num_labels": num_labels} if task == "classification" else {}
    meta = build_meta_model(hf_config, family, **overrides)
    total = count_parameters(meta)
    fraction = config.cls_budget_fraction if task == "classification" else config.lm_budget_fraction
    nominal = max(1, math.floor(fraction * total))
    names = find_target_modules(meta)
    rows = sum(linear_shape(meta.get_submodule(n))[0] for n in names)
    k = taskedge_k(nominal, rows)
    prefix = re.compile(rf"^{re.escape(family.blocks_path)}\.\d+\.")
    targets = sorted({prefix.sub("", n) for n in names})
    lora = lora_shape(meta, names, targets, k * rows)
    head = head_module(task)
    head_params = sum(p.numel() for p in meta.get_submodule(head).parameters())
    layers = int(hf_config.num_hidden_layers)
    return _Plan(
        task=task,
        model_dir=str(model_dir),
        edge_model=EDGE_NAMES[task],
        num_labels=num_labels if task == "classification" else None,
        total_parameters=total,
        budget_fraction=fraction,
        nominal_budget=nominal,
        budget=k * rows,
        taskedge_k=k,
        taskedge_fraction=taskedge_fraction(k * rows, total),
        targets=targets,
        lora_rank=lora.rank,
        lora_targets=lora.targets,
        lora_parameters=lora.parameters,
        head_parameters=head_params,
        new_head=task == "classification",
        device_layers=config.cls_device_layers if task == "classification" else config.lm_device_layers,
        head_layers=config.cls_head_layers if task == "classification" else config.lm_head_layers,
        num_layers=layers,
    )


def _task_summary(plan: _Plan) -> dict[str, Any]:
    if plan.task == "classification":
        what = "pretrained all-MiniLM-L6-v2: which stdlib package wrote a docstring (sequence classification)"
        metric = "test_accuracy"
    else:
        what = (
            "Llama-style model from a config (random init, then pretrained here on stdlib source code "
            "unless lm_pretrain_steps=0): next-byte prediction of stdlib docstrings"
        )
        metric = "test_loss"
    return {
        "description": what,
        "metric": metric,
        "model_dir": plan.model_dir,
        "total_parameters": plan.total_parameters,
        "budget_fraction": plan.budget_fraction,
        "nominal_budget_parameters": plan.nominal_budget,
        "budget_parameters": plan.budget,
        "taskedge_k_per_row": plan.taskedge_k,
        "lora": {
            "rank": plan.lora_rank,
            "target_modules": plan.lora_targets,
            "parameters": plan.lora_parameters,
        },
        "target_modules": plan.targets,
        "head_parameters": plan.head_parameters,
        "head_is_new": plan.new_head,
        "split": {
            "num_layers": plan.num_layers,
            "device_layers": plan.device_layers,
            "head_layers": plan.head_layers,
            "trunk_blocks": [plan.device_layers, plan.num_layers - plan.head_layers],
        },
    }


def _run_method(
    task: str, method: str, plan: _Plan, data: dict[str, Any], config: MethodsBenchConfig, address: str
) -> dict[str, Any]:
    """The learning rate chosen on validation with the first seed, then every other seed at it."""
    base = (config.cls_lr if task == "classification" else config.lm_lr)[method]
    first, others = config.seeds[0], config.seeds[1:]
    tried: dict[float, dict[str, Any]] = {}
    for lr in (base * m for m in config.lr_multipliers):
        logger.info("bench methods: %s / %s, lr %.3g, seed %d (choice)", task, method, lr, first)
        tried[lr] = _run_worker(_worker_spec(task, method, plan, data, config, address, first, lr))
    chosen = min(tried, key=lambda lr: validation_key(tried[lr], task))
    runs = [tried[chosen]]
    for seed in others:
        logger.info("bench methods: %s / %s, lr %.3g, seed %d", task, method, chosen, seed)
        runs.append(_run_worker(_worker_spec(task, method, plan, data, config, address, seed, chosen)))
    return summarize_method(runs, tried, plan.budget, method)


def _worker_spec(
    task: str,
    method: str,
    plan: _Plan,
    data: dict[str, Any],
    config: MethodsBenchConfig,
    address: str,
    seed: int,
    lr: float,
) -> dict[str, Any]:
    classification = task == "classification"
    return {
        "task": task,
        "method": method,
        "plan": asdict(plan),
        "edge_address": address,
        "seed": seed,
        "threads": config.threads,
        "lr": lr,
        "epochs": config.cls_epochs if classification else config.lm_epochs,
        "batch_size": config.cls_batch_size if classification else config.lm_batch_size,
        "max_length": config.cls_max_length if classification else config.lm_max_length,
        "max_steps": config.max_steps,
        "calibration_batches": config.calibration_batches,
        "in_process": config.in_process,
        "data": data,
    }


def _run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    started = time.perf_counter()
    if spec["in_process"]:
        threads = torch.get_num_threads()
        try:
            result = run_method(spec)
        finally:
            torch.set_num_threads(threads)  # the worker sets its own
        result["process_seconds"] = round(time.perf_counter() - started, 1)
        return result
    result = run_worker(
        "splitft.bench.methods",
        spec,
        prefix=RESULT_PREFIX,
        label=f"bench worker {spec['task']}/{spec['method']}",
        timeout=WORKER_TIMEOUT_S,
    )
    result["process_seconds"] = round(time.perf_counter() - started, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    """`python -m splitft.bench.methods [--quick] [--markdown]`: the default (or quick) run;
    `--worker`: one method."""
    args = sys.argv[1:] if argv is None else argv
    if "--worker" in args:
        return worker_main()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    report = run_methods_bench(MethodsBenchConfig(**QUICK) if "--quick" in args else MethodsBenchConfig())  # type: ignore[arg-type]
    sys.stdout.write(report + "\n")
    if "--markdown" in args:
        sys.stdout.write("\n" + markdown_table(report) + "\n")
    return 0
