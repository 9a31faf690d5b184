"""`splitft bench offsite`: offsite tuning against an emulator vs split tuning, side by side.

On `bench converge`'s two tasks (the demo's classification with all-MiniLM-L6-v2, k=2, j=1; a
byte-level causal LM pretrained in this run, 6 blocks, k=1, j=1), with the same batches, steps,
schedule, LoRA and seeds, each seed trains:

* `zero_shot`: the full model untrained (for classification, its seeded new head);
* `offsite_drop`: the device's adapters on the layer-dropped emulator, plugged into the full model;
* `offsite_distilled`: the same on the emulator distilled against the full trunk;
* `split_frozen`: split through an edge process, the trunk frozen (the same trainable parameters
  as offsite tuning: the upper bound it approaches);
* `split_trunk_lora`: split with LoRA on the trunk too.

Offsite rows are evaluated twice: on the emulator (`emulator_*`) and, the number that matters,
plugged into the full model in one process. The training variants run in an order rotated per seed.
Reported per variant: the held-out loss (and accuracy) over seeds (median, quartiles, extremes),
training seconds, bytes on the wire, and the weights the device holds; per task: the emulator's
parameters and bytes against the full model's and the distillation's normalized MSE.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel

from device_client import EdgeConnection, OffsiteModel, SplitModel
from splitft.bench.common import spread, torch_threads
from splitft.bench.converge import EDGE_NAMES, ConvergeBenchConfig, ConvergeTask, build_tasks, evaluate
from splitft.emulator.build import num_layers
from splitft.emulator.distill import DistillConfig
from splitft.emulator.make import EmulatorReport, build_emulator
from splitft.errors import InvalidArgument
from splitft.local.launch import EdgeProcess
from splitft.model.loading import load_span, read_config

logger = logging.getLogger(__name__)

TASKS = ("classification", "causal_lm")
VARIANTS = ("offsite_drop", "offsite_distilled", "split_frozen", "split_trunk_lora")
QUICK = {
    "steps": 3,
    "seeds": 1,
    "distill_steps": 3,
    "max_per_class": 20,
    "lm_pretrain_steps": 3,
    "threads": 1,
}


@dataclass
class OffsiteBenchConfig:
    tasks: tuple[str, ...] = TASKS
    steps: int = 60  # optimizer steps per (task, variant, seed)
    seeds: int = 3  # seeds 0..seeds-1
    keep: int = 0  # trunk blocks the emulators keep; 0: half the trunk, rounded up
    distill_steps: int = 200
    distill_lr: float = 1e-3
    threads: int = 2  # torch threads here and in the edge process
    max_per_class: int = 160
    lm_pretrain_steps: int = 150
    quick: bool = False  # recorded; the CLI fills unset options from QUICK

    def __post_init__(self) -> None:
        self.tasks = tuple(self.tasks)
        if not self.tasks or set(self.tasks) - set(TASKS):
            raise InvalidArgument(f"tasks must be among {TASKS}, got {list(self.tasks)}")
        if min(self.steps, self.seeds, self.threads, self.max_per_class) < 1:
            raise InvalidArgument("steps, seeds, threads and max_per_class must be >= 1")
        if self.keep < 0 or self.distill_steps < 1 or self.lm_pretrain_steps < 0:
            raise InvalidArgument("keep must be >= 0, distill_steps >= 1 and lm_pretrain_steps >= 0")

    def converge(self, seed: int) -> ConvergeBenchConfig:
        """The tasks' settings: `bench converge`'s, with a 6-block causal LM (a trunk of 4 to drop from)."""
        return ConvergeBenchConfig(
            tasks=self.tasks, codecs=("raw",), steps=self.steps, seed=seed, threads=self.threads,
            max_per_class=self.max_per_class, lm_layers=6, lm_pretrain_steps=self.lm_pretrain_steps,
        )  # fmt: skip


def run_offsite_bench(config: OffsiteBenchConfig) -> str:
    """Run the benchmark and return its JSON report."""
    started, load_start = time.perf_counter(), _load_average()
    results: dict[str, Any] = {}
    with torch_threads(config.threads), tempfile.TemporaryDirectory(prefix="splitft-bench-offsite-") as tmp:
        tasks, pretrain = build_tasks(config.converge(0), Path(tmp))
        edge_models = [f"{EDGE_NAMES[t.name]}={t.model_dir}" for t in tasks]
        with EdgeProcess(edge_models, threads=config.threads, log_path=str(Path(tmp) / "edge.log")) as edge:
            for task in tasks:
                results[task.name] = _run_task(task, config, edge.address, Path(tmp))
    report = {
        "benchmark": "offsite",
        "config": asdict(config),
        "tasks": results,
        "lm_pretraining": pretrain,
        "seconds": round(time.perf_counter() - started, 1),
        "load_average": {"start": load_start, "end": _load_average(), "cpus": os.cpu_count()},
    }
    return json.dumps(report, indent=2)


def _run_task(task: ConvergeTask, config: OffsiteBenchConfig, address: str, tmp: Path) -> dict[str, Any]:
    emulators = _emulators(task, config, tmp / task.name)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in ("zero_shot", *VARIANTS)}
    orders = []
    for seed in range(config.seeds):
        runs["zero_shot"].append(_zero_shot(task, seed))
        order = VARIANTS[seed % len(VARIANTS) :] + VARIANTS[: seed % len(VARIANTS)]  # rotated per seed
        orders.append(list(order))
        for variant in order:
            logger.info("bench offsite: %s / %s / seed %d", task.name, variant, seed)
            if variant.startswith("offsite"):
                emulator = emulators["drop" if variant == "offsite_drop" else "distilled"]
                row = _offsite(task, emulator, seed, tmp / f"{task.name}-{variant}-{seed}")
            else:
                row = _split(task, address, seed, trunk_lora=variant == "split_trunk_lora")
            runs[variant].append(row)
    full_bytes = _weight_bytes(_full_model(task, 0).root)
    return {
        "train_steps": len(task.train),
        "heldout_batches": len(task.heldout),
        "split": {"device_layers": task.device_layers, "head_layers": 1},
        "full_model_weight_bytes": full_bytes,
        "emulator": {name: report.to_json() for name, report in emulators.items()},
        "variants": {name: _summary(rows) for name, rows in runs.items()},
        "orders": orders,
    }


def _emulators(task: ConvergeTask, config: OffsiteBenchConfig, out: Path) -> dict[str, EmulatorReport]:
    trunk = num_layers(read_config(task.model_dir)[0]) - task.device_layers - 1
    keep = config.keep or math.ceil(trunk / 2)
    k = task.device_layers
    drop = build_emulator(task.model_dir, out / "drop", device_layers=k, head_layers=1, keep=keep)
    inputs = [{k: v for k, v in b.items() if k != "labels"} for b in task.train]
    heldout = [{k: v for k, v in b.items() if k != "labels"} for b in task.heldout[:2]]
    distill = DistillConfig(steps=config.distill_steps, lr=config.distill_lr, seed=0)
    distilled = build_emulator(
        task.model_dir, out / "distilled", device_layers=k, head_layers=1, keep=keep,
        distill_config=distill, train=inputs, heldout=heldout,
    )  # fmt: skip
    return {"drop": drop, "distilled": distilled}


def _full_model(task: ConvergeTask, seed: int) -> Any:
    """The full task model in one process; a head the checkpoint lacks initialised from `seed`."""
    torch.manual_seed(seed)
    return load_span(
        task.model_dir, lambda _r, _f: None, init_missing=True, config_overrides=task.config_overrides
    )


def _zero_shot(task: ConvergeTask, seed: int) -> dict[str, Any]:
    return evaluate(_full_model(task, seed).root, task)


def _offsite(task: ConvergeTask, emulator: EmulatorReport, seed: int, out: Path) -> dict[str, Any]:
    torch.manual_seed(seed)  # the same device adapter and head init as the split runs
    model = OffsiteModel.from_emulator(
        emulator.out, lora_config=task.lora_config, config_overrides=task.config_overrides
    )
    row = _train(model, task, seed)
    row["device_weight_bytes"] = _weight_bytes(model)  # the whole emulator and the adapter
    row.update({f"emulator_{k}": v for k, v in evaluate(model, task).items()})
    model.save_adapter(out)
    full = PeftModel.from_pretrained(_full_model(task, seed).root, str(out))
    row.update(evaluate(full, task))  # the plug-in adapter in the full model
    return row


def _split(task: ConvergeTask, address: str, seed: int, *, trunk_lora: bool) -> dict[str, Any]:
    with EdgeConnection(address, insecure=True) as conn:
        torch.manual_seed(seed)
        model = SplitModel.from_pretrained(
            task.model_dir, edge=conn, model=EDGE_NAMES[task.name], device_layers=task.device_layers,
            head_layers=1, seed=seed, lora_config=task.lora_config, trunk_lora=trunk_lora,
            config_overrides=task.config_overrides,
        )  # fmt: skip
        with model:
            row = _train(model, task, seed)
            row["device_weight_bytes"] = _weight_bytes(model)  # device spans and adapter; no trunk
            row.update(evaluate(model, task))
    return row


def _train(model: Any, task: ConvergeTask, seed: int) -> dict[str, Any]:
    """`bench converge`'s recipe: AdamW, one-cycle schedule, clipping at 1.0, the task's batches."""
    torch.manual_seed(seed)
    optimizer = model.configure_optimizer(torch.optim.AdamW, lr=task.lr, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=task.lr, total_steps=len(task.train), pct_start=0.1
    )
    started = time.perf_counter()
    model.train()
    for batch in task.train:
        model(**batch).loss.backward()
        optimizer.clip_grad_norm_(1.0)
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
    stats = model.stats
    return {
        "train_seconds": round(time.perf_counter() - started, 2),
        "wire_bytes_per_step": round((stats.bytes_sent + stats.bytes_received) / len(task.train)),
    }


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _weight_bytes(module: torch.nn.Module) -> int:
    """Bytes of the parameters `module` holds, frozen and trainable (a split model's: the device's
    spans and adapter; the trunk lives on the edge)."""
    return sum(p.numel() * p.element_size() for p in module.parameters())


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    keys = [k for k in rows[0] if isinstance(rows[0][k], (int, float))]
    return {"seeds": len(rows), **{k: spread([float(r[k]) for r in rows]) for k in keys}, "runs": rows}


def markdown_table(report_json: str) -> str:
    """The report as one Markdown table per task (medians over seeds, [min, max] in brackets)."""
    report = json.loads(report_json)
    lines: list[str] = []
    for name, task in report["tasks"].items():
        emulator = task["emulator"]["distilled"]
        sizes, distilled = emulator["size"], emulator["distillation"]
        trunk = emulator["num_layers"] - emulator["device_layers"] - emulator["head_layers"]
        lines += [
            f"### {name}: k={emulator['device_layers']}, j={emulator['head_layers']}; the emulator keeps "
            f"trunk blocks {emulator['kept_trunk_blocks']} of {trunk}: {sizes['emulator_parameters']:,} "
            f"of {sizes['source_parameters']:,} parameters ({sizes['ratio']}); distillation "
            f"{distilled['steps']} steps, held-out normalized MSE "
            f"{distilled['heldout_normalized_mse_before']} -> {distilled['heldout_normalized_mse_after']}",
            "",
            "| variant | held-out loss | accuracy | emulator loss | device weights (MB) | train s "
            "| wire bytes/step |",
            "|---|---|---|---|---|---|---|",
        ]
        for variant, row in task["variants"].items():
            lines.append(
                f"| {variant} | {_cell(row, 'heldout_loss')} | {_cell(row, 'heldout_accuracy')} | "
                f"{_cell(row, 'emulator_heldout_loss')} | {_mb(row, 'device_weight_bytes')} | "
                f"{_cell(row, 'train_seconds')} | {_cell(row, 'wire_bytes_per_step')} |"
            )
        lines.append("")
    load = report["load_average"]
    lines.append(
        f"load average (1, 5, 15 min) at start {load['start']}, at end {load['end']}, on "
        f"{load['cpus']} CPUs; {report['seconds']} s in all"
    )
    return "\n".join(lines)


def _cell(row: dict[str, Any], key: str) -> str:
    if key not in row:
        return "-"
    s = row[key]
    shown = [_number(s[k]) for k in ("median", "min", "max")]
    return f"{shown[0]} [{shown[1]}, {shown[2]}]" if row["seeds"] > 1 else shown[0]


def _number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:g}"


def _mb(row: dict[str, Any], key: str) -> str:
    return f"{row[key]['median'] / 2**20:.1f}" if key in row else "-"
