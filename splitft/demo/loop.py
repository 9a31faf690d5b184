"""`splitft demo` (the whole loop): control plane, an edge and three device agents, in real processes.

An operator creates the job over REST; each device enrolls with a CSR, polls, trains its session on
its own shard of the data (non-IID: Dirichlet class shares, seeded) over mutual TLS with a token
signed by the control plane, reports metrics and uploads its adapter; the operator downloads every
device's adapter over REST and evaluates it. Then (unless `federated` is off) the same devices run a
federated job on the same shards, and the operator evaluates its one global adapter next to them.
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

from splitft.data.shards import dirichlet_shards, shard_histogram
from splitft.data.stdlib_task import Example, TextTask, batches, build_stdlib_task
from splitft.demo.federated import FederatedOutcome, federated_spec, print_comparison, run_federated_job
from splitft.demo.privacy import print_privacy_headline
from splitft.demo.sdk import DemoConfig, default_model_dir
from splitft.demo.summary import print_summary
from splitft.errors import InvalidArgument
from splitft.local.loop import LocalLoop, write_jsonl
from splitft.security.files import write_private_file

MODEL = "minilm"


@dataclass
class LoopDemoConfig(DemoConfig):
    devices: int = 3  # device agents, each with its own shard of the training data
    alpha: float = 0.5  # Dirichlet concentration of the devices' class shares (small: more skewed)
    federated: bool = True  # then a federated job on the same devices and shards
    rounds: int = 3
    local_steps: int = 6  # per device and round

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.devices < 1 or self.rounds < 1 or self.local_steps < 1 or not self.alpha > 0:
            raise InvalidArgument("devices, rounds and local steps must be >= 1 and alpha > 0")


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
    shards = _shards(task, names, config)
    console.print(
        f"[bold]task[/]: which stdlib package wrote this docstring? {list(task.labels)}; "
        f"{len(task.train)} train examples split over {len(names)} devices non-IID (Dirichlet alpha "
        f"{config.alpha}, seed {config.seed}), {len(task.heldout)} held out"
    )
    with LocalLoop(out / "loop") as loop:
        key_file = out / "operator.key"  # for the dashboard and `splitft jobs` while the demo runs
        write_private_file(key_file, loop.operator_key.encode() + b"\n", force=True)
        console.print(
            f"[bold]control plane[/] {loop.url} (SQLite in {loop.root / 'data'}; HTTPS, verified against "
            f"{loop.certs / 'ca.pem'}); API docs at {loop.url}/docs; dashboard at {loop.url}/ui and "
            f"`splitft jobs list --control-plane {loop.url} --ca {loop.certs / 'ca.pem'} "
            f"--operator-key-file {key_file}`"
        )
        loop.start_edge("edge-1", [f"{MODEL}={model_dir}"], ["--quantize", config.quantize])
        console.print("[bold]edge[/] edge-1 registered over REST, serving the trunk over mutual TLS")
        for name in names:
            data = write_jsonl(shards[name], out / "data" / f"{name}.jsonl")
            sessions = 1 + (config.rounds if config.federated else 0)  # a session per job and round
            loop.start_agent(loop.enroll_device(name), data, f"{MODEL}={model_dir}", max_sessions=sessions)
        console.print(
            f"[bold]devices[/] {', '.join(names)} enrolled (tokens pin the CA that signs their certificates)"
        )
        started = time.perf_counter()
        spec = _job_spec(config, names, len(task.labels))
        job = loop.create_job(spec)
        console.print(f"[bold]job[/] {job['id']} created over REST: {job['state']} {job['reason']}")
        job = _follow(loop, job["id"], {n: len(s) for n, s in shards.items()}, config, console)
        seconds = time.perf_counter() - started
        adapters = {name: loop.download_adapter(job["id"], name, out / "adapters" / name) for name in names}
        metrics = loop.api("GET", f"/v1/jobs/{job['id']}/metrics").json()
        fed = None
        if config.federated:
            fed = run_federated_job(
                loop, federated_spec(spec, config.rounds, config.local_steps), out, console
            )
    summary = _evaluate(model_dir, task, adapters, metrics, config, fed)
    summary.update(job_id=job["id"], state=job["state"], job_seconds=round(seconds, 1), devices=len(names))
    summary["privacy_token_recovery"] = print_privacy_headline(console, model_dir, task, config)
    per_device: dict[str, dict[str, object]] = summary["per_device"]  # type: ignore[assignment]
    for name, row in per_device.items():
        row.update(examples=len(shards[name]), per_class=_histogram(shards[name]))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    _print(console, summary)
    if fed is not None:
        print_comparison(console, summary)
    print_summary(console, summary, out)
    return summary


def _shards(task: TextTask, names: list[str], config: LoopDemoConfig) -> dict[str, list[Example]]:
    """Each device's training examples: Dirichlet(alpha) class shares, seeded (splitft.data.shards)."""
    split = dirichlet_shards([e.label for e in task.train], len(names), config.alpha, config.seed)
    return {name: [task.train[i] for i in split[k]] for k, name in enumerate(names)}


def _histogram(examples: list[Example]) -> dict[int, int]:
    return shard_histogram([e.label for e in examples], [range(len(examples))])[0]


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
    model_dir: Path,
    task: TextTask,
    adapters: dict[str, Path],
    metrics: dict,
    config: LoopDemoConfig,
    fed: FederatedOutcome | None,
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
    summary: dict[str, object] = {
        "labels": list(task.labels),
        "accuracy_before": round(before, 4),
        "per_device": per_device,
    }
    if fed is not None:
        job, rounds, adapter, seconds = fed
        accuracy = None
        if job["state"] == "succeeded":
            model = BertForSequenceClassification.from_pretrained(str(model_dir), num_labels=len(task.labels))
            peft_model = PeftModel.from_pretrained(model, str(adapter)).eval()
            accuracy = round(_accuracy(peft_model, tokenizer, task.heldout, config.max_length), 4)
        summary["federated"] = {
            "job_id": job["id"],
            "state": job["state"],
            "reason": job["reason"],
            "job_seconds": round(seconds, 1),
            "accuracy": accuracy,
            "adapter": str(adapter) if accuracy is not None else None,
            "rounds": rounds,
        }
    return summary


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
