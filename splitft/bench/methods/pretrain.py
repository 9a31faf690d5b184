"""A tiny Llama-style causal LM pretrained on stdlib source code: the base model `bench methods` and
`bench converge` adapt to docstrings."""

from __future__ import annotations

import importlib
import inspect
import random
import time
from pathlib import Path
from typing import Any, Protocol

import torch
from transformers import LlamaForCausalLM

from splitft.bench.methods.data import encode_bytes
from splitft.testing.tiny import save_tiny_model

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
    source = "".join(inspect.getsource(importlib.import_module(name)) for name in PRETRAIN_MODULES)
    return [source[i : i + max_length] for i in range(0, len(source) - max_length, max_length)]


class LmPretrainSettings(Protocol):
    """The causal-LM fields the benchmarks that pretrain a tiny Llama share (methods, converge)."""

    lm_layers: int
    lm_hidden: int
    lm_pretrain_steps: int
    lm_max_length: int
    threads: int

    @property
    def seed(self) -> int: ...  # a field, or `bench methods`' first seed


def pretrained_tiny_llama(
    directory: Path, settings: LmPretrainSettings
) -> tuple[Path, dict[str, Any] | None]:
    """A Llama-style model from a config saved to `directory`, then (`lm_pretrain_steps` > 0) every
    weight trained on stdlib source code and saved in place; returns its path and the report.

    Gives a causal-LM task a base model that knows bytes of Python-ish text, so that fine-tuning
    ADAPTS it (code -> docstring prose) instead of fitting a random network. The caller's RNG state
    and torch thread count stay as they were.
    """
    caller_threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        try:
            s = settings
            tiny = save_tiny_model("llama", directory, layers=s.lm_layers, hidden=s.lm_hidden, seed=s.seed)
            steps = s.lm_pretrain_steps
            report = _pretrain(tiny.path, steps, s.lm_max_length, s.threads, s.seed) if steps else None
        finally:
            torch.set_num_threads(caller_threads)
    return tiny.path, report


def _pretrain(path: Path, steps: int, max_length: int, threads: int, seed: int) -> dict[str, Any]:
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
