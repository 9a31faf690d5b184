"""What every wire-level benchmark shares: the model and batch config, a torch thread budget, one
training step, a split model on a local edge and the spread of a sample."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from device_client import EdgeConnection, SplitModel
from device_client.retry import RetryPolicy
from splitft.errors import InvalidArgument
from splitft.testing.tiny import lora_config_for


@dataclass
class BenchModelConfig:
    """The model and batch a wire-level benchmark trains (a Llama-style model from a config)."""

    family: str = "llama"
    layers: int = 8
    hidden: int = 512
    batch: int = 8
    tokens: int = 128
    threads: int = 1  # torch threads in each process (device, edge, and the one-process run)
    device_layers: int = 1
    head_layers: int = 1

    def __post_init__(self) -> None:
        if min(self.layers, self.hidden, self.batch, self.threads) < 1 or self.tokens < 2:
            raise InvalidArgument("layers, hidden, batch and threads must be >= 1 and tokens >= 2")
        if (
            self.device_layers < 1
            or self.head_layers < 0
            or self.device_layers + self.head_layers >= self.layers
        ):
            raise InvalidArgument("need device_layers >= 1, head_layers >= 0 and at least one trunk block")


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run with `threads` torch threads, then give the caller back its own count."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def spread(values: list[float], digits: int = 4) -> dict[str, float]:
    """Median, quartiles and extremes of a sample (the quartiles by the inclusive method)."""
    ordered = sorted(values)
    q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive") if len(ordered) > 1 else ordered * 3
    return {
        "median": round(statistics.median(ordered), digits),
        "q1": round(q1, digits),
        "q3": round(q3, digits),
        "min": round(ordered[0], digits),
        "max": round(ordered[-1], digits),
    }


def train_step(model: Any, optimizer: Any, batch: dict[str, torch.Tensor], micro_batches: int = 0) -> float:
    """One step (forward, backward, optimizer step); returns its seconds. `micro_batches` > 0 uses
    `SplitModel.forward_backward` with that many pipelined micro-batches."""
    started = time.perf_counter()
    if micro_batches:
        model.forward_backward(batch, micro_batches=micro_batches)
    else:
        model(**batch).loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    if torch.cuda.is_initialized():  # CUDA-only branch: the step's kernels have finished
        torch.cuda.synchronize()
    return time.perf_counter() - started


def split_model(
    path: Path,
    conn: EdgeConnection,
    config: BenchModelConfig,
    codec: str = "raw",
    *,
    stream: bool = True,
    edge_model: str = "bench",
    device: str = "cpu",
    dtype: str = "float32",
    retry: RetryPolicy | None = None,
) -> tuple[SplitModel, Any]:
    """A split model of the saved model at `path` (named `edge_model` on the edge), and its AdamW."""
    model = SplitModel.from_pretrained(
        path,
        edge=conn,
        model=edge_model,
        device_layers=config.device_layers,
        head_layers=config.head_layers,
        codec=codec,
        lora_config=lora_config_for(config.family),
        stream=stream,
        device=device,
        dtype=dtype,
        retry=retry,
    )
    return model, model.configure_optimizer(torch.optim.AdamW, lr=1e-3)
