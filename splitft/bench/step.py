"""`splitft bench step`: one training step in one process vs split over loopback, side by side.

Runs per round: the whole peft model in one process; split over plaintext gRPC; split over mutual
TLS with session tokens (one `Train` stream per session); the same over mutual TLS with one unary
call per tensor instead of the stream; and the mTLS split with the batch cut into 2 and 4 pipelined
micro-batches (`SplitModel.forward_backward`). Each edge runs in its own process.

Every side runs the same model, batch and torch thread budget in the same run, rounds are
interleaved, and the median of the per-round ratios is reported, because this machine is shared and
noisy. Bytes per step per codec are `splitft bench wire`'s job.
"""

from __future__ import annotations

import functools
import json
import logging
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from peft import get_peft_model

from device_client import EdgeConnection
from splitft.bench.common import BenchModelConfig, split_model, torch_threads, train_step
from splitft.errors import InvalidArgument
from splitft.local.launch import EdgeProcess, LocalPki
from splitft.testing.tiny import lora_config_for, make_batch, save_tiny_model

logger = logging.getLogger(__name__)

StepFn = Callable[[], float]
RATIOS = (
    ("split_insecure", "local"),
    ("split_mtls", "local"),
    ("split_mtls", "split_insecure"),
    ("split_mtls_per_call", "split_mtls"),
    ("split_mtls_pipelined_2", "split_mtls"),
    ("split_mtls_pipelined_4", "split_mtls"),
)


@dataclass
class StepBenchConfig(BenchModelConfig):
    """`bench step`: the model and batch, and how many interleaved rounds to time."""

    repeats: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.repeats < 1:
            raise InvalidArgument("repeats must be >= 1")


def _param_bytes(params) -> tuple[int, int]:
    params = list(params)
    return sum(p.numel() for p in params), sum(p.numel() * p.element_size() for p in params)


def run_step_bench(config: StepBenchConfig) -> str:
    """Run the benchmark and return its JSON report."""
    with torch_threads(config.threads), tempfile.TemporaryDirectory() as tmp:
        tiny = save_tiny_model(config.family, Path(tmp) / "model", layers=config.layers, hidden=config.hidden)
        batch = make_batch(config.family, torch.Generator().manual_seed(0), config.batch, config.tokens)
        torch.manual_seed(0)
        local = get_peft_model(tiny.model_class.from_pretrained(tiny.path), lora_config_for(config.family))
        local_opt = torch.optim.AdamW([p for p in local.parameters() if p.requires_grad], lr=1e-3)
        secure = LocalPki.create(Path(tmp) / "pki", device="bench")
        models = [f"bench={tiny.path}"]
        with (
            EdgeProcess(models, threads=config.threads) as plain_edge,
            EdgeProcess(
                models,
                threads=config.threads,
                tls=secure.tls,
                extra_args=["--token-issuer-key", str(secure.issuer_pub)],
            ) as tls_edge,
            EdgeConnection(plain_edge.address, insecure=True) as plain_conn,
        ):
            splits: dict[str, tuple[Any, Any]] = {
                "split_insecure": split_model(tiny.path, plain_conn, config)
            }
            connections = []
            for name, stream in (
                ("split_mtls", True),
                ("split_mtls_per_call", False),
                ("split_mtls_pipelined_2", True),
                ("split_mtls_pipelined_4", True),
            ):
                conn = secure.connect(tls_edge.address, session=f"bench-{name}", model="bench")
                connections.append(conn)
                splits[name] = split_model(tiny.path, conn, config, stream=stream)
            try:
                runs: dict[str, StepFn] = {"local": lambda: train_step(local, local_opt, batch)}
                for name, (model, opt) in splits.items():
                    micro = int(name.rsplit("_", 1)[1]) if "pipelined" in name else 0
                    runs[name] = functools.partial(train_step, model, opt, batch, micro)
                timing = interleaved(runs, config.repeats, RATIOS)
                share = _device_share(local, splits["split_insecure"][0])
            finally:
                for model, _ in splits.values():
                    model.close()
                for conn in connections:
                    conn.close()
    report = {"benchmark": "step", "config": asdict(config), "step_seconds": timing, "device_share": share}
    return json.dumps(report, indent=2)


def interleaved(
    runs: dict[str, StepFn], repeats: int, ratios: tuple[tuple[str, str], ...]
) -> dict[str, float]:
    """Time each run once per round, rounds interleaved; report medians and per-round ratio medians."""
    for _ in range(2):  # warm-up: allocator, first-call overheads, gRPC connection and TLS handshake
        for run in runs.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for round_ in range(repeats):
        logger.info("bench: round %d of %d", round_ + 1, repeats)
        for name, run in runs.items():
            times[name].append(run())
    report: dict[str, float] = {f"{name}_median": round(statistics.median(t), 5) for name, t in times.items()}
    for a, b in ratios:
        per_round = [x / y for x, y in zip(times[a], times[b], strict=True)]
        report[f"ratio_{a}_vs_{b}"] = round(statistics.median(per_round), 3)
    report["rounds"] = repeats
    return report


def _device_share(local, split) -> dict[str, float]:
    whole_params, whole_bytes = _param_bytes(p for n, p in local.named_parameters() if "lora_" not in n)
    dev_params, dev_bytes = _param_bytes(p for n, p in split.named_parameters() if "lora_" not in n)
    return {
        "whole_model_parameters": whole_params,
        "device_parameters": dev_params,
        "device_parameter_fraction": round(dev_params / whole_params, 4),
        "whole_model_bytes": whole_bytes,
        "device_bytes": dev_bytes,
    }
