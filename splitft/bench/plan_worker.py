"""The planner's worker: one candidate in this fresh process (`python -m splitft.bench.plan_worker
--worker < spec.json`), measured with `bench memory`'s instruments.

It warms up (the candidate itself, one step of one row, then freed) so that imports, kernels and
the session stream are in the baseline; resets the kernel's peak-RSS mark; loads the candidate and
trains `train_steps` steps of the training data against the edge; then scores the held-out data.
Per step after the first: this process's CPU seconds (the device's compute), the edge process's
CPU seconds, wall seconds and bytes each way. The peak is the RSS high-water mark over the
baseline, load and training included.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from splitft.bench.peak_rss import peak_kib, release_freed_memory, reset_peak
from splitft.bench.procfs import cpu_seconds, own_cpu_seconds
from splitft.bench.worker import serve_worker
from splitft.plan.candidates import PRECISION_SDK, Candidate

RESULT_PREFIX = "SPLITFT_PLAN_RESULT "
LORA_TARGETS = {"bert": ["query", "value"], "gpt2": ["c_attn"], "llama": ["q_proj", "v_proj"]}


def host_flops(threads: int, size: int = 512, repeats: int = 8) -> float:
    """This machine's fp32 matmul FLOP/s on `threads` threads (best of `repeats`): what a class's
    `--device-flops` is compared with."""
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


def _batches(spec: dict[str, Any], tokenizer: Any, rows: list[list[Any]]) -> list[dict[str, torch.Tensor]]:
    out = []
    size = int(spec["batch_size"])
    for start in range(0, len(rows), size):
        texts = [text for text, _ in rows[start : start + size]]
        enc = tokenizer(
            texts, padding=True, truncation=True, max_length=int(spec["max_length"]), return_tensors="pt"
        )
        labels = torch.tensor([label for _, label in rows[start : start + size]])
        out.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels})
    return out


def _build(spec: dict[str, Any], candidate: Candidate, conn: Any) -> Any:
    import peft

    from device_client import SplitModel

    model_type = json.loads((Path(spec["model_dir"]) / "config.json").read_text()).get("model_type", "")
    dtype, quantize = PRECISION_SDK[candidate.precision]
    lora = peft.LoraConfig(
        r=candidate.lora_r,
        lora_alpha=2 * candidate.lora_r,
        target_modules=LORA_TARGETS.get(model_type, ["q_proj", "v_proj"]),
        task_type="SEQ_CLS",
    )
    return SplitModel.from_pretrained(
        spec["model_dir"],
        edge=conn,
        model=spec["edge_model"],
        device_layers=candidate.device_layers,
        head_layers=candidate.head_layers,
        lora_config=lora,
        codec=candidate.codec,
        dtype=dtype,
        quantize=quantize,
        config_overrides={"num_labels": int(spec["num_labels"])},
        batch_shape=(int(spec["batch_size"]), int(spec["max_length"])),
    )


def _step(model: Any, optimizer: Any, batch: dict[str, torch.Tensor]) -> None:
    model(**batch).loss.backward()
    optimizer.step()
    optimizer.zero_grad()


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Warm up, train and score one candidate in this process; its figures."""
    from transformers import AutoTokenizer

    from device_client import EdgeConnection

    torch.set_num_threads(int(spec["threads"]))
    torch.manual_seed(int(spec["seed"]))
    candidate = Candidate.model_validate(spec["candidate"])
    data = json.loads(Path(spec["data"]).read_text())
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    train, heldout = _batches(spec, tokenizer, data["train"]), _batches(spec, tokenizer, data["heldout"])
    with EdgeConnection(spec["edge"], insecure=True) as conn:
        warm = _build(spec, candidate, conn)
        _step(warm, warm.configure_optimizer(torch.optim.AdamW, lr=float(spec["lr"])), train[0])
        warm.close()
        del warm
        release_freed_memory()
        baseline_kib, _ = reset_peak()
        model = _build(spec, candidate, conn)
        figures = _train(spec, model, train)
        figures["device_peak_bytes"] = max(0, (peak_kib() - baseline_kib) * 1024)
        figures.update(_score(model, heldout))
        model.close()
    return figures


def _train(spec: dict[str, Any], model: Any, train: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
    """`train_steps` steps; per-step figures over the steps after the first (warm)."""
    optimizer = model.configure_optimizer(torch.optim.AdamW, lr=float(spec["lr"]))
    steps = int(spec["train_steps"])
    _step(model, optimizer, train[0])
    before = model.stats
    cpu0, edge0, wall0 = own_cpu_seconds(), cpu_seconds(spec.get("edge_pid")), time.perf_counter()
    for i in range(1, steps):
        _step(model, optimizer, train[i % len(train)])
    wall = time.perf_counter() - wall0
    cpu1, edge1, after = own_cpu_seconds(), cpu_seconds(spec.get("edge_pid")), model.stats
    n = steps - 1
    return {
        "bytes_up": (after.bytes_sent - before.bytes_sent) // n,
        "bytes_down": (after.bytes_received - before.bytes_received) // n,
        "device_compute_s": round((cpu1 - cpu0) / n, 6),
        "edge_compute_s": round(((edge1 or 0.0) - (edge0 or 0.0)) / n, 6),
        "loopback_step_s": round(wall / n, 6),
        "train_steps": steps,
    }


def _score(model: Any, heldout: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """Mean cross-entropy and accuracy over the held-out examples."""
    model.eval()
    total, correct, count = 0.0, 0, 0
    with torch.no_grad():
        for batch in heldout:
            logits = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits.float()
            labels = batch["labels"]
            total += float(torch.nn.functional.cross_entropy(logits, labels, reduction="sum"))
            correct += int((logits.argmax(-1) == labels).sum())
            count += len(labels)
    return {"held_out_loss": round(total / count, 6), "held_out_accuracy": round(correct / count, 4)}


if __name__ == "__main__":
    if "--worker" not in sys.argv[1:]:
        sys.exit("usage: python -m splitft.bench.plan_worker --worker < spec.json (or: splitft plan run)")
    sys.exit(serve_worker(measure, prefix=RESULT_PREFIX))
