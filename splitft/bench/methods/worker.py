"""The `bench methods` worker: one method on one task, in its own process (`--worker`).

A fresh process per method, so that the methods' memory peaks do not mix.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from splitft.bench.methods import baselines
from splitft.bench.methods.builders import Built, build_lora, build_taskedge, build_tinytrain, size_tinytrain
from splitft.bench.methods.config import BUDGET_MATCHED, RESULT_PREFIX, SPLIT_METHODS, Batch
from splitft.bench.methods.data import Data, prepare_data
from splitft.bench.peak_rss import peak_kib, release_freed_memory, reset_peak

# Each method's builder: (worker spec, data) -> the method's model, ready to train.
BUILDERS: dict[str, Callable[[dict[str, Any], Data], Built]] = {
    "lora": build_lora,
    "taskedge": build_taskedge,
    "tinytrain": build_tinytrain,
    "random": baselines.build_random,
    "magnitude": baselines.build_magnitude,
    "tinytrain_nocost": baselines.build_tinytrain_nocost,
    "full": baselines.build_full,
    "head_only": baselines.build_head_only,
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
        losses.append(float(loss.detach()))
    return losses


def _make_optimizer(built: Built, lr: float) -> Any:
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
    import splitft.methods.taskedge.device  # noqa: F401  (the methods' halves load on first use)
    import splitft.methods.tinytrain.device  # noqa: F401

    layer = nn.Linear(32, 32)
    optimizer = torch.optim.AdamW(layer.parameters())
    layer(torch.randn(4, 32)).sum().backward()
    optimizer.step()


@dataclass
class _Measured:
    """What one method's run measured in the worker (peaks in KiB, wire stats as (sent, received))."""

    before: dict[str, float]  # test split, untrained
    after: dict[str, float]  # test split, trained
    validation: dict[str, float]  # validation split, trained: what choices are made on
    losses: list[float]
    peaks: dict[str, int]
    wire: tuple[tuple[int, int], tuple[int, int], tuple[int, int]] | None  # before train, after, final
    device: int
    trunk: int
    setup_seconds: float
    train_seconds: float


def run_method(spec: dict[str, Any]) -> dict[str, Any]:
    """One method on one task in THIS process: build, evaluate, train, evaluate; the figures."""
    torch.set_num_threads(int(spec["threads"]))
    torch.manual_seed(int(spec["seed"]))
    data = prepare_data(spec)
    _preload()
    if spec["method"] == "tinytrain":
        spec = size_tinytrain(spec, data)
    release_freed_memory()
    baseline_kib, reset = reset_peak()
    started = time.perf_counter()
    built = BUILDERS[spec["method"]](spec, data)
    try:
        measured = _measure(built, data, spec, started)
    finally:
        built.close()
    seconds = time.perf_counter() - started
    return _result(spec, built, measured, baseline_kib, reset, seconds)


def _measure(built: Built, data: Data, spec: dict[str, Any], started: float) -> _Measured:
    """Evaluate, train and evaluate again the method `built`; memory peaks per phase."""
    setup_seconds = time.perf_counter() - started
    task, lr = spec["task"], float(spec["lr"])
    peaks: dict[str, int] = {}
    before = _evaluate(built.model, data.test, task)
    peaks["setup_and_eval"] = peak_kib()
    release_freed_memory()
    reset_peak()
    wire_before_train = built.stats() if built.stats else None
    optimizer = _make_optimizer(built, lr)
    train_started = time.perf_counter()
    losses = _train(built.model, optimizer, data.train_epochs, lr)
    train_seconds = time.perf_counter() - train_started
    peaks["train"] = peak_kib()
    wire_after_train = built.stats() if built.stats else None
    validation = _evaluate(built.model, data.validation, task)
    after = _evaluate(built.model, data.test, task)
    peaks["eval_after"] = peak_kib()
    device = sum(p.numel() for p in built.model.parameters() if p.requires_grad)
    trunk = built.trunk_trainable()
    wire_final = built.stats() if built.stats else None
    wire = None
    if wire_final is not None and wire_before_train is not None and wire_after_train is not None:
        wire = (wire_before_train, wire_after_train, wire_final)
    return _Measured(
        before, after, validation, losses, peaks, wire, device, trunk, setup_seconds, train_seconds
    )


def _wire_report(m: _Measured) -> dict[str, Any] | None:
    if m.wire is None:
        return None
    before_train, after_train, final = m.wire
    train_bytes = sum(after_train) - sum(before_train)
    return {
        "bytes_sent": final[0],
        "bytes_received": final[1],
        "train_bytes_per_step": round(train_bytes / max(1, len(m.losses))),
    }


def _result(
    spec: dict[str, Any], built: Built, m: _Measured, baseline_kib: int, reset: bool, seconds: float
) -> dict[str, Any]:
    """The worker's figures for the report."""
    task, method, plan = spec["task"], spec["method"], spec["plan"]
    metric = "accuracy" if task == "classification" else "loss"
    head = int(plan["head_parameters"]) if plan["new_head"] or method == "head_only" else 0
    return {
        "task": task,
        "method": method,
        "split": method in SPLIT_METHODS,
        "budget_matched": method in BUDGET_MATCHED,
        "metric": {
            "name": f"test_{metric}",
            "before": m.before[metric],
            "after": m.after[metric],
            "validation": m.validation[metric],
        },
        "test_before": m.before,
        "test_after": m.after,
        "validation_after": m.validation,
        "train_loss_first": m.losses[0],
        "train_loss_last_10": sum(m.losses[-10:]) / len(m.losses[-10:]),
        "steps": len(m.losses),
        "lr": float(spec["lr"]),
        "seed": int(spec["seed"]),
        "trainable": {
            "device": m.device,
            "trunk": m.trunk,
            "total": m.device + m.trunk,
            "head": head,
            "method": m.device + m.trunk - (head if method != "head_only" else 0),
        },
        "selection": built.selection,
        "memory": {
            "baseline_rss_mib": round(baseline_kib / 1024, 1),
            # peak RSS minus the baseline (libraries and data loaded, no model yet), per phase
            "train_peak_delta_mib": round((m.peaks["train"] - baseline_kib) / 1024, 1),
            "peak_delta_mib": round((max(m.peaks.values()) - baseline_kib) / 1024, 1),
            "phase_peak_delta_mib": {k: round((v - baseline_kib) / 1024, 1) for k, v in m.peaks.items()},
            "peak_was_reset": reset,
        },
        "wire": _wire_report(m),
        "seconds": round(seconds, 2),
        "setup_seconds": round(m.setup_seconds, 2),
        "train_seconds": round(m.train_seconds, 2),
    }


def worker_main() -> int:
    """`--worker`: run the method the spec on stdin names; print its figures as one prefixed JSON line."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    spec = json.loads(sys.stdin.read())
    result = run_method(spec)
    sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0
