"""`splitft bench wire`: serialized bytes per training step, up and down, per codec, vs `raw`.

One edge process over plaintext loopback (the codec, not TLS, decides the bytes) and one split
session per codec on the same model and batch. After a warm-up step (which also carries the
optimizer's configuration), each measured step is cut into its phases by the connection's byte
counters: the forward moves activations (h_k up, h_{L-j} down), the backward moves gradients
(dL/dh_{L-j} up, dL/dh_k down), and the optimizer step a few control bytes. Every figure is a
serialized gRPC message size, headers and ids included.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from device_client import EdgeConnection
from splitft.bench.common import BenchModelConfig, split_model, torch_threads, train_step
from splitft.compress import parse_codecs
from splitft.errors import InvalidArgument
from splitft.local.launch import EdgeProcess
from splitft.testing.tiny import make_batch, save_tiny_model

logger = logging.getLogger(__name__)

DEFAULT_WIRE_CODECS: tuple[str, ...] = (
    "raw",
    "fp16",
    "bf16",
    "int8",
    "activations=int8,gradients=int8:sr",
    "activations=int8,gradients=topk:0.01",
    "activations=int8,gradients=topk:0.01:noef",
    "activations=int8,gradients=lowrank:4:ef",
    "activations=int8,gradients=lowrank:4",
    "activations=int8,gradients=lowrank:8:ef",
    "activations=int8,gradients=lowrank:8",
    "int4",
    "activations=int4,gradients=lowrank:4",
    "activations=int4,gradients=lowrank:8",
)
# From the issue that asked for the codecs: bytes relative to raw a codec should reach (int4 rows:
# the stretch target).
TARGETS: dict[str, float] = {
    "int8": 0.27,
    "activations=int8,gradients=topk:0.01": 0.15,
    "activations=int8,gradients=lowrank:4:ef": 0.15,
    "activations=int8,gradients=lowrank:8": 0.15,
    "activations=int4,gradients=lowrank:4": 0.08,
    "activations=int4,gradients=lowrank:8": 0.08,
}


@dataclass
class WireBenchConfig(BenchModelConfig):
    steps: int = 2  # measured steps per codec, after one warm-up step
    codecs: tuple[str, ...] = field(default_factory=lambda: DEFAULT_WIRE_CODECS)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.steps < 1:
            raise InvalidArgument("steps must be >= 1")
        self.codecs = tuple(str(parse_codecs(c)) for c in self.codecs)  # canonical; refuses unknown
        if "raw" not in self.codecs:
            self.codecs = ("raw", *self.codecs)  # every ratio is to raw


def run_wire_bench(config: WireBenchConfig) -> str:
    """Run the benchmark and return its JSON report."""
    with torch_threads(config.threads), tempfile.TemporaryDirectory() as tmp:
        tiny = save_tiny_model(config.family, Path(tmp) / "model", layers=config.layers, hidden=config.hidden)
        batch = make_batch(config.family, torch.Generator().manual_seed(0), config.batch, config.tokens)
        with EdgeProcess([f"bench={tiny.path}"], threads=config.threads) as edge:
            per_codec = {
                codec: _measure(tiny.path, edge.address, codec, config, batch) for codec in config.codecs
            }
    raw_total = per_codec["raw"]["total"]
    for row in per_codec.values():
        row["ratio_to_raw"] = round(row["total"] / raw_total, 4)
    targets = [
        {
            "codec": codec,
            "ratio_to_raw": per_codec[codec]["ratio_to_raw"],
            "target": target,
            "met": per_codec[codec]["ratio_to_raw"] <= target,
        }
        for codec, target in TARGETS.items()
        if codec in per_codec
    ]
    report = {"benchmark": "wire", "config": asdict(config), "bytes_per_step": per_codec, "targets": targets}
    return json.dumps(report, indent=2)


def _measure(path: Path, address: str, codec: str, config: WireBenchConfig, batch: dict) -> dict[str, Any]:
    logger.info("bench wire: %s", codec)
    with EdgeConnection(address, insecure=True) as conn:
        model, optimizer = split_model(path, conn, config, codec)
        with model:
            phases = measure_phases(model, optimizer, batch, config.steps)
    up = sum(phase["up"] for phase in phases.values())
    down = sum(phase["down"] for phase in phases.values())
    return {"up": up, "down": down, "total": up + down, **phases}


def measure_phases(model: Any, optimizer: Any, batch: dict, steps: int) -> dict[str, dict[str, int]]:
    """Mean bytes up and down per step in the forward, backward and optimizer phases (after a
    warm-up step)."""
    train_step(model, optimizer, batch)
    totals = {name: [0, 0] for name in ("activations", "gradients", "optimizer")}
    for _ in range(steps):
        marks = [_counters(model)]
        loss = model(**batch).loss
        marks.append(_counters(model))
        loss.backward()
        marks.append(_counters(model))
        optimizer.step()
        optimizer.zero_grad()
        marks.append(_counters(model))
        for name, before, after in zip(totals, marks, marks[1:], strict=False):
            totals[name][0] += after[0] - before[0]
            totals[name][1] += after[1] - before[1]
    return {name: {"up": up // steps, "down": down // steps} for name, (up, down) in totals.items()}


def _counters(model: Any) -> tuple[int, int]:
    stats = model.stats
    return stats.bytes_sent, stats.bytes_received
