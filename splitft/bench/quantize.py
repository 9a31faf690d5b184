"""`splitft bench quantize`: frozen weights in fp32, int8 and nf4 side by side in one run.

Each scheme applies to both sides at once: the edge serves the trunk quantized (`edge serve
--quantize`, one edge process per scheme, all up together) and the device quantizes its own blocks
(`SplitModel.from_pretrained(quantize=...)`). Per scheme:

* trunk and device weight bytes: the spans loaded here as each side loads them (deterministic);
* device peak memory: the `bench memory` worker (`rss` mode: peak RSS over a baseline taken after a
  warm-up, in a fresh process) training the device side of `bench step`'s model, `rounds` workers
  per scheme, the schemes' order alternating by round;
* step time: `steps_per_round` timed training steps of `bench step`'s model per scheme per round,
  the order alternating by round (the first step of each split model is a warm-up);
* held-out loss after `bench converge`'s recipe (same data, seed, adapter init and schedule), with
  its gap to fp32; `fp32 (repeat)` is the comparison's noise floor.

Targets (the issue that asked for quantization): int8 trunk weights at most 0.3x fp32's at most 2%
held-out loss gap; device peak memory with int8 at most 0.6x fp32's. bf16 (at most 1% gap) is the
edge's `--dtype`, not a quantization scheme.
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
from splitft.bench.common import BenchModelConfig, spread, torch_threads, train_step
from splitft.bench.converge import EDGE_NAMES, ConvergeBenchConfig, build_tasks, train_and_evaluate
from splitft.bench.memory import RESULT_PREFIX, WORKER_TIMEOUT_S, MemoryBenchConfig
from splitft.bench.worker import run_worker
from splitft.errors import InvalidArgument
from splitft.local.launch import EdgeProcess
from splitft.model.loading import device_view, edge_view, load_span
from splitft.model.quantize import check_available, weight_bytes
from splitft.model.schemes import QUANTIZE_SCHEMES
from splitft.model.spans import Skipped
from splitft.testing.tiny import lora_config_for, make_batch, save_tiny_model

logger = logging.getLogger(__name__)

LABELS = {"none": "fp32", "int8": "int8", "nf4": "nf4"}
TRUNK_BYTES_TARGET = {"int8": 0.3}  # x fp32's trunk weight bytes
LOSS_GAP_TARGET = {"int8": 2.0}  # percent over fp32's held-out loss
DEVICE_PEAK_TARGET = {"int8": 0.6}  # x fp32's device peak memory
MIB = 1024 * 1024


@dataclass
class QuantizeBenchConfig(BenchModelConfig):
    """`bench step`'s model and batch for bytes, memory and time; `bench converge`'s for the loss."""

    schemes: tuple[str, ...] = QUANTIZE_SCHEMES
    rounds: int = 3
    steps_per_round: int = 3  # timed steps per scheme and round
    memory_steps: int = 3  # training steps in each memory worker
    converge_tasks: tuple[str, ...] = ("causal_lm",)  # `bench converge`'s tasks for the loss gap
    converge_steps: int = 60
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # ConvergeBenchConfig overrides (tests: tiny)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.schemes = tuple(self.schemes)
        if "none" not in self.schemes:
            self.schemes = ("none", *self.schemes)  # every ratio is to fp32
        for scheme in self.schemes:
            check_available(scheme, "cpu")
        if min(self.rounds, self.steps_per_round, self.memory_steps, self.converge_steps) < 1:
            raise InvalidArgument("rounds, steps_per_round, memory_steps and converge_steps must be >= 1")

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
            report["device_peak"] = _device_peaks(bench, edges["none"], config, root)
    report["targets"] = targets(report)
    report["seconds"] = round(time.perf_counter() - started, 1)
    return json.dumps(report, indent=2)


def _edge(models: list[str], config: QuantizeBenchConfig, scheme: str, root: Path) -> EdgeProcess:
    log = str(root / f"edge-{scheme}.log")
    return EdgeProcess(models, threads=config.threads, extra_args=["--quantize", scheme], log_path=log)


def _weight_bytes(path: Path, config: QuantizeBenchConfig, scheme: str) -> dict[str, int]:
    """Weight bytes of the trunk (blocks k..L-j) and of the device span (the rest), as loaded."""
    start, stop = config.device_layers, config.layers - config.head_layers
    trunk = load_span(path, lambda r, f: edge_view(r, f, start, stop), init_missing=False, quantize=scheme)
    device = load_span(
        path,
        lambda r, f: device_view(r, f, start, stop, Skipped("trunk")),
        init_missing=True,
        quantize=scheme,
    )
    return {"trunk_bytes": weight_bytes(trunk.root), "device_bytes": weight_bytes(device.root)}


def _order(schemes: tuple[str, ...], round_index: int) -> tuple[str, ...]:
    return schemes if round_index % 2 == 0 else schemes[::-1]


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
                    quantize=scheme,
                )
            )  # fmt: skip
            runs[scheme] = (model, model.configure_optimizer(torch.optim.AdamW, lr=1e-3))
            train_step(*runs[scheme], batch)  # warm-up: kernels, threads, the session stream
        for r in range(config.rounds):
            for scheme in _order(config.schemes, r):
                logger.info("bench quantize: step time, round %d, %s", r + 1, LABELS[scheme])
                seconds[scheme] += [train_step(*runs[scheme], batch) for _ in range(config.steps_per_round)]
    return _with_ratios(seconds, digits=4)


def _with_ratios(samples: dict[str, list[float]], digits: int) -> dict[str, Any]:
    """Each scheme's spread, by label, with its median over fp32's."""
    fp32 = spread(samples["none"], digits)["median"]
    rows = {LABELS[s]: spread(v, digits) for s, v in samples.items()}
    return {label: {**row, "vs_fp32": round(row["median"] / fp32, 3)} for label, row in rows.items()}


def _losses(task: Any, edges: dict[str, EdgeProcess], config: QuantizeBenchConfig) -> dict[str, Any]:
    runs: dict[str, dict[str, Any]] = {}
    for label, scheme in [(LABELS[s], s) for s in config.schemes] + [("fp32 (repeat)", "none")]:
        logger.info("bench quantize: %s / %s", task.name, label)
        with EdgeConnection(edges[scheme].address, insecure=True) as conn:
            torch.manual_seed(config.seed)  # same device adapter and head init for every scheme
            with task.split_model(conn, "raw", config.seed, quantize=scheme) as model:
                runs[label] = train_and_evaluate(model, task, config.seed)
    fp32 = runs["fp32"]["heldout_loss"]
    for row in runs.values():
        row["gap_percent"] = round(100.0 * (row["heldout_loss"] - fp32) / fp32, 3)
    return runs


def _device_peaks(bench: Any, edge: EdgeProcess, config: QuantizeBenchConfig, root: Path) -> dict[str, Any]:
    """The device side's peak RSS over its baseline, per scheme, from `bench memory`'s worker (the
    edge's own quantization does not change the device's memory: one fp32 edge serves them all)."""
    warm = save_tiny_model(config.family, root / "warmup", layers=2, hidden=32)
    memory = MemoryBenchConfig(**{k: getattr(config, k) for k in asdict(BenchModelConfig())})
    base = {
        **asdict(memory),
        "steps": config.memory_steps,
        "model_dir": str(bench.path),
        "warmup_dir": str(warm.path),
        "model_name": "bench",
        "warmup_name": "warmup",
        "model_class": bench.model_class.__name__,
        "side": "device",
        "mode": "rss",
    }
    peaks: dict[str, list[float]] = {s: [] for s in config.schemes}
    with EdgeProcess([f"bench={bench.path}", f"warmup={warm.path}"], threads=config.threads) as plain:
        base["edge"] = plain.address
        for r in range(config.rounds):
            for scheme in _order(config.schemes, r):
                logger.info("bench quantize: device peak memory, round %d, %s", r + 1, LABELS[scheme])
                result = run_worker(
                    "splitft.bench.memory",
                    {**base, "quantize": scheme},
                    prefix=RESULT_PREFIX,
                    label=f"memory worker {scheme}",
                    timeout=WORKER_TIMEOUT_S,
                )
                peaks[scheme].append(result["train_peak_delta_bytes"] / MIB)
    return _with_ratios(peaks, digits=2)


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of the issue with the measured value and whether it is met."""
    weights, fp32 = report["weights"], report["weights"]["none"]
    rows = []
    for scheme, most in TRUNK_BYTES_TARGET.items():
        if scheme in weights:
            ratio = round(weights[scheme]["trunk_bytes"] / fp32["trunk_bytes"], 3)
            rows.append({"target": f"{scheme} trunk bytes / fp32", "at_most": most, "value": ratio})
    for task, runs in report["heldout"].items():
        for scheme, most in LOSS_GAP_TARGET.items():
            if LABELS[scheme] in runs:
                gap = runs[LABELS[scheme]]["gap_percent"]
                name = f"{scheme} held-out loss gap % ({task})"
                rows.append({"target": name, "at_most": most, "value": gap})
    for scheme, most in DEVICE_PEAK_TARGET.items():
        if LABELS[scheme] in report["device_peak"]:
            ratio = report["device_peak"][LABELS[scheme]]["vs_fp32"]
            rows.append({"target": f"{scheme} device peak / fp32", "at_most": most, "value": ratio})
    return [{**row, "met": row["value"] <= row["at_most"]} for row in rows]


def markdown_table(report: dict[str, Any]) -> str:
    """The report as the Markdown table docs/benchmarks.md shows."""
    fp32 = report["weights"]["none"]
    lines = [
        "| weights | trunk MiB (x fp32) | device MiB (x fp32) | device peak MiB (x fp32) "
        "| step s (x fp32) | " + " | ".join(f"held-out loss {t} (gap %)" for t in report["heldout"]) + " |",
        "|---" * (5 + len(report["heldout"])) + "|",
    ]
    for scheme, label in LABELS.items():
        if scheme not in report["weights"]:
            continue
        w, peak, step = report["weights"][scheme], report["device_peak"][label], report["step_seconds"][label]
        cells = [
            label,
            f"{w['trunk_bytes'] / MIB:.2f} ({w['trunk_bytes'] / fp32['trunk_bytes']:.3f})",
            f"{w['device_bytes'] / MIB:.2f} ({w['device_bytes'] / fp32['device_bytes']:.3f})",
            f"{peak['median']:.1f} [{peak['min']:.1f}-{peak['max']:.1f}] ({peak['vs_fp32']:.2f})",
            f"{step['median']:.3f} [{step['min']:.3f}-{step['max']:.3f}] ({step['vs_fp32']:.2f})",
            *(_loss_cell(runs[label]) for runs in report["heldout"].values()),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _loss_cell(run: dict[str, Any]) -> str:
    return f"{run['heldout_loss']:.4f} ({run['gap_percent']:+.2f})"
