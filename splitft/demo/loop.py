"""`splitft demo` (the whole loop): control plane, an edge and three device agents, in real processes.

An operator creates the job over REST; each device enrolls with a CSR, polls, trains its session on
its own shard of the data over mutual TLS with a token signed by the control plane, reports metrics
and uploads its adapter; the operator downloads every device's adapter over REST and evaluates it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import PeftModel
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table
from transformers import AutoTokenizer, BertForSequenceClassification

from splitft.data.stdlib_task import Example, TextTask, batches, build_stdlib_task
from splitft.demo.sdk import DemoConfig, default_model_dir
from splitft.local.loop import LocalLoop, write_jsonl

MODEL = "minilm"


@dataclass
class LoopDemoConfig(DemoConfig):
    devices: int = 3  # device agents, each with its own shard of the training data


def _job_spec(config: LoopDemoConfig, names: list[str], num_labels: int) -> dict:
    return {
        "name": "stdlib-docstrings",
        "model": MODEL,
        "device_layers": config.device_layers,
        "head_layers": config.head_layers,
        "codec": config.codec,
        "trunk_lora": True,
        "lora": {
            "r": 8,
            "lora_alpha": 16,
            "target_modules": ["query", "key", "value", "dense"],
            "task_type": "SEQ_CLS",
        },
        "optimizer": {"name": "AdamW", "lr": config.lr, "weight_decay": 0.01},
        "schedule": {"name": "linear", "warmup_steps": 3},
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "max_length": config.max_length,
        "num_labels": num_labels,
        "clip_grad_norm": 1.0,
        "devices": names,
    }


def run_loop_demo(config: LoopDemoConfig, console: Console | None = None) -> dict[str, object]:
    console = console or Console()
    model_dir = Path(config.model_dir) if config.model_dir else default_model_dir()
    out = Path(config.out_dir)
    task = build_stdlib_task(max_per_class=config.max_per_class)
    names = [f"device-{i + 1}" for i in range(config.devices)]
    console.print(
        f"[bold]task[/]: which stdlib package wrote this docstring? {list(task.labels)}; "
        f"{len(task.train)} train examples split over {len(names)} devices, {len(task.heldout)} held out"
    )
    with LocalLoop(out / "loop") as loop:
        console.print(
            f"[bold]control plane[/] {loop.url} (SQLite in {loop.root / 'data'}; HTTPS, verified against "
            f"{loop.certs / 'ca.pem'}); API docs at {loop.url}/docs"
        )
        loop.start_edge("edge-1", [f"{MODEL}={model_dir}"], ["--quantize", config.quantize])
        console.print("[bold]edge[/] edge-1 registered over REST, serving the trunk over mutual TLS")
        shards = {name: task.train[i :: len(names)] for i, name in enumerate(names)}
        for name in names:
            data = write_jsonl(shards[name], out / "data" / f"{name}.jsonl")
            loop.start_agent(loop.enroll_device(name), data, f"{MODEL}={model_dir}")
        console.print(
            f"[bold]devices[/] {', '.join(names)} enrolled (tokens pin the CA that signs their certificates)"
        )
        started = time.perf_counter()
        job = loop.create_job(_job_spec(config, names, len(task.labels)))
        console.print(f"[bold]job[/] {job['id']} created over REST: {job['state']} {job['reason']}")
        job = _follow(loop, job["id"], {n: len(s) for n, s in shards.items()}, config, console)
        seconds = time.perf_counter() - started
        adapters = {name: loop.download_adapter(job["id"], name, out / "adapters" / name) for name in names}
        metrics = loop.api("GET", f"/v1/jobs/{job['id']}/metrics").json()
    summary = _evaluate(model_dir, task, adapters, metrics, config)
    summary.update(job_id=job["id"], state=job["state"], job_seconds=round(seconds, 1), devices=len(names))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    _print(console, summary)
    return summary


def _follow(
    loop: LocalLoop, job_id: str, shard_sizes: dict[str, int], config: LoopDemoConfig, console: Console
) -> dict:
    """Show each device's progress from the metrics it reports, until the job ends."""
    totals = {n: config.epochs * -(-size // config.batch_size) for n, size in shard_sizes.items()}
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
    )
    with Progress(*columns, console=console) as progress:
        bars = {n: progress.add_task(n, total=t, loss="-") for n, t in totals.items()}
        while True:
            job = loop.job(job_id)
            for session in loop.api("GET", f"/v1/jobs/{job_id}/metrics").json()["sessions"]:
                if session["points"]:
                    last = session["points"][-1]
                    progress.update(
                        bars[session["device"]], completed=last["step"], loss=f"{last['loss']:.3f}"
                    )
            if job["state"] in ("succeeded", "failed", "cancelled"):
                return job
            time.sleep(1.0)


@torch.no_grad()
def _accuracy(model, tokenizer, examples: tuple[Example, ...], max_length: int) -> float:
    correct = 0
    for texts, labels in batches(examples, 64):
        enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        correct += int((model(**enc).logits.argmax(-1) == torch.tensor(labels)).sum())
    return correct / max(1, len(examples))


def _evaluate(
    model_dir: Path, task: TextTask, adapters: dict[str, Path], metrics: dict, config: LoopDemoConfig
) -> dict[str, object]:
    """The operator's view: each downloaded adapter, loaded with plain peft, on the held-out set."""
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    torch.manual_seed(config.seed)
    base = BertForSequenceClassification.from_pretrained(str(model_dir), num_labels=len(task.labels)).eval()
    before = _accuracy(base, tokenizer, task.heldout, config.max_length)
    per_device = {}
    for session in metrics["sessions"]:
        name = session["device"]
        model = BertForSequenceClassification.from_pretrained(str(model_dir), num_labels=len(task.labels))
        peft_model = PeftModel.from_pretrained(model, str(adapters[name])).eval()
        last = session["points"][-1] if session["points"] else {}
        per_device[name] = {
            "accuracy_after": round(_accuracy(peft_model, tokenizer, task.heldout, config.max_length), 4),
            "last_loss": last.get("loss"),
            "steps": last.get("step"),
            "bytes_sent": last.get("bytes_sent"),
            "bytes_received": last.get("bytes_received"),
            "adapter": str(adapters[name]),
        }
    return {"labels": list(task.labels), "accuracy_before": round(before, 4), "per_device": per_device}


def _print(console: Console, summary: dict) -> None:
    table = Table(
        "device",
        "steps",
        "last loss",
        "held-out accuracy",
        "bytes sent / received",
        "adapter (via REST)",
        title=f"job {summary['job_id']}: {summary['state']} in {summary['job_seconds']} s",
    )
    for name, row in summary["per_device"].items():
        table.add_row(
            name,
            str(row["steps"]),
            f"{row['last_loss']:.3f}",
            f"{row['accuracy_after']:.1%}",
            f"{row['bytes_sent']:,} / {row['bytes_received']:,}",
            row["adapter"],
        )
    console.print(table)
    console.print(
        f"held-out accuracy of the pretrained model with an untrained head: {summary['accuracy_before']:.1%}"
    )
