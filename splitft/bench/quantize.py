"""`splitft bench quantize`: frozen weights in fp32, bf16, int8 and nf4 side by side in one run.

Each variant applies to both sides at once: the edge serves the trunk quantized or in bf16 (`edge
serve --quantize` or `--dtype bfloat16`, one edge process per variant, all up together) and the
device loads its own spans the same way (`SplitModel.from_pretrained(quantize=..., dtype=...)`).
Per variant:

* trunk and device weight bytes: the spans loaded here as each side loads them (deterministic);
* device peak memory (`splitft.bench.quantize_memory`): `bench memory`'s worker training the
  device side of `bench step`'s model in a fresh process, measured as peak RSS and as torch's
  allocator peak plus file-mapped weights, at `bench step`'s batch and at a small batch where the
  weights dominate, the variants' order alternating by round;
* step time: `steps_per_round` timed training steps of `bench step`'s model per scheme per round,
  the order alternating by round (the first step of each split model is a warm-up);
* held-out loss after `bench converge`'s recipe (same data, seed, adapter init and schedule), with
  its gap to fp32; `fp32 (repeat)` is the comparison's noise floor.

Targets (the issue that asked for quantization): int8 trunk weights at most 0.3x fp32's at most 2%
held-out loss gap; bf16 at most 1% gap; device peak memory with int8 at most 0.6x fp32's.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from device_client import EdgeConnection, SplitModel
from splitft.bench.common import BenchModelConfig, torch_threads, train_step
from splitft.bench.converge import EDGE_NAMES, ConvergeBenchConfig, build_tasks, train_and_evaluate
from splitft.bench.quantize_memory import device_peaks
from splitft.bench.quantize_report import markdown_table, targets
from splitft.bench.quantize_variants import (
    LABELS,
    VARIANTS,
    check_variant,
    dtype_of,
    order,
    parse_shape,
    quantize_of,
    with_ratios,
)
from splitft.errors import InvalidArgument
from splitft.local.launch import EdgeProcess
from splitft.model.loading import device_view, edge_view, load_span
from splitft.model.placement import Placement
from splitft.model.quantize import weight_bytes
from splitft.model.spans import Skipped
from splitft.testing.tiny import lora_config_for, make_batch, save_tiny_model

__all__ = ["QuantizeBenchConfig", "markdown_table", "run_quantize_bench"]

logger = logging.getLogger(__name__)


# `bench memory`'s measures; `rss_fixed_threshold` is `rss` with glibc's mmap threshold fixed, which
# shows how much of a quantized device's peak RSS is the allocator's cache (docs/benchmarks.md).
MEMORY_MODES = ("rss", "rss_fixed_threshold", "alloc")


@dataclass
class QuantizeBenchConfig(BenchModelConfig):
    """`bench step`'s model and batch for bytes, memory and time; `bench converge`'s for the loss."""

    schemes: tuple[str, ...] = VARIANTS
    rounds: int = 3
    steps_per_round: int = 3  # timed steps per scheme and round
    memory_steps: int = 3  # training steps in each memory worker
    converge_tasks: tuple[str, ...] = ("causal_lm",)  # `bench converge`'s tasks for the loss gap
    converge_steps: int = 60
    memory_rounds: int = 2  # memory workers per variant, shape and measure
    memory_shapes: tuple[str, ...] = ()  # "BATCHxTOKENS" for the device peak; () = the bench batch, 1x32
    memory_modes: tuple[str, ...] = ("rss", "alloc")  # `bench memory`'s measures
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # ConvergeBenchConfig overrides (tests: tiny)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.schemes = tuple(self.schemes)
        if "none" not in self.schemes:
            self.schemes = ("none", *self.schemes)  # every ratio is to fp32
        for scheme in self.schemes:
            check_variant(scheme)
        self.memory_shapes = tuple(self.memory_shapes) or (f"{self.batch}x{self.tokens}", "1x32")
        for shape in self.memory_shapes:
            parse_shape(shape)
        self.memory_modes = tuple(self.memory_modes)
        if not self.memory_modes or set(self.memory_modes) - set(MEMORY_MODES):
            raise InvalidArgument(
                f"memory_modes must be some of {', '.join(MEMORY_MODES)}, got {self.memory_modes}"
            )
        counts = [
            self.rounds,
            self.steps_per_round,
            self.memory_steps,
            self.converge_steps,
            self.memory_rounds,
        ]
        if min(counts) < 1:
            raise InvalidArgument(
                "rounds, steps_per_round, memory_steps, converge_steps and memory_rounds must be >= 1"
            )

    def converge(self) -> ConvergeBenchConfig:
        """`bench converge`'s config for the loss runs (its defaults but tasks, steps, seed, threads)."""
        return ConvergeBenchConfig(
            tasks=self.converge_tasks,
            codecs=("raw",),
            steps=self.converge_steps,
            seed=self.seed,
            threads=self.threads,
            **self.extra,
        )


def run_quantize_bench(config: QuantizeBenchConfig) -> str:
    """Run the benchmark and return its JSON report."""
    started = time.perf_counter()
    with torch_threads(config.threads), tempfile.TemporaryDirectory(prefix="splitft-bench-quantize-") as tmp:
        root = Path(tmp)
        bench = save_tiny_model(config.family, root / "bench", layers=config.layers, hidden=config.hidden)
        tasks, _ = build_tasks(config.converge(), root)
        models = [f"bench={bench.path}", *(f"{EDGE_NAMES[t.name]}={t.model_dir}" for t in tasks)]
        report: dict[str, Any] = {"benchmark": "quantize", "config": asdict(config)}
        report["weights"] = {s: _weight_bytes(bench.path, config, s) for s in config.schemes}
        with ExitStack() as stack:
            edges = {s: stack.enter_context(_edge(models, config, s, root)) for s in config.schemes}
            report["step_seconds"] = _step_times(bench.path, edges, config)
            report["heldout"] = {t.name: _losses(t, edges, config) for t in tasks}
            report["device_peak"] = device_peaks(bench, config, root)
    report["targets"] = targets(report)
    report["seconds"] = round(time.perf_counter() - started, 1)
    return json.dumps(report, indent=2)


def _edge(models: list[str], config: QuantizeBenchConfig, scheme: str, root: Path) -> EdgeProcess:
    log = str(root / f"edge-{scheme}.log")
    args = ["--dtype", dtype_of(scheme), "--quantize", quantize_of(scheme)]
    return EdgeProcess(models, threads=config.threads, extra_args=args, log_path=log)


def _weight_bytes(path: Path, config: QuantizeBenchConfig, scheme: str) -> dict[str, int]:
    """Weight bytes of the trunk (blocks k..L-j) and of the device span (the rest), as loaded."""
    start, stop = config.device_layers, config.layers - config.head_layers
    placement = Placement(dtype=dtype_of(scheme)).resolve()
    quantize = quantize_of(scheme)
    trunk = load_span(
        path,
        lambda r, f: edge_view(r, f, start, stop),
        init_missing=False,
        placement=placement,
        quantize=quantize,
    )
    device = load_span(
        path,
        lambda r, f: device_view(r, f, start, stop, Skipped("trunk")),
        init_missing=True,
        placement=placement,
        quantize=quantize,
    )
    return {"trunk_bytes": weight_bytes(trunk.root), "device_bytes": weight_bytes(device.root)}


def _step_times(path: Path, edges: dict[str, EdgeProcess], config: QuantizeBenchConfig) -> dict[str, Any]:
    batch = make_batch(config.family, torch.Generator().manual_seed(config.seed), config.batch, config.tokens)
    seconds: dict[str, list[float]] = {s: [] for s in config.schemes}
    with ExitStack() as stack:
        runs = {}
        for scheme, edge in edges.items():
            conn = stack.enter_context(EdgeConnection(edge.address, insecure=True))
            model = stack.enter_context(
                SplitModel.from_pretrained(
                    path, edge=conn, model="bench", device_layers=config.device_layers,
                    head_layers=config.head_layers, lora_config=lora_config_for(config.family),
                    quantize=quantize_of(scheme), dtype=dtype_of(scheme),
                )
            )  # fmt: skip
            runs[scheme] = (model, model.configure_optimizer(torch.optim.AdamW, lr=1e-3))
            train_step(*runs[scheme], batch)  # warm-up: kernels, threads, the session stream
        for r in range(config.rounds):
            for scheme in order(config.schemes, r):
                logger.info("bench quantize: step time, round %d, %s", r + 1, LABELS[scheme])
                seconds[scheme] += [train_step(*runs[scheme], batch) for _ in range(config.steps_per_round)]
    return with_ratios(seconds, digits=4)


def _losses(task: Any, edges: dict[str, EdgeProcess], config: QuantizeBenchConfig) -> dict[str, Any]:
    runs: dict[str, dict[str, Any]] = {}
    for label, scheme in [(LABELS[s], s) for s in config.schemes] + [("fp32 (repeat)", "none")]:
        logger.info("bench quantize: %s / %s", task.name, label)
        with EdgeConnection(edges[scheme].address, insecure=True) as conn:
            torch.manual_seed(config.seed)  # same device adapter and head init for every scheme
            with task.split_model(conn, "raw", config.seed, quantize_of(scheme), dtype_of(scheme)) as model:
                runs[label] = train_and_evaluate(model, task, config.seed)
    fp32 = runs["fp32"]["heldout_loss"]
    for row in runs.values():
        row["gap_percent"] = round(100.0 * (row["heldout_loss"] - fp32) / fp32, 3)
    return runs
