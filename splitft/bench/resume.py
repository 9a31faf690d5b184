"""`splitft bench resume`: what resilience costs, side by side in one run (issue 17).

* Step time with checkpoints every 1, 10, 100 steps and without: one split session per setting on
  one edge process (batching off: the sessions take turns, none waits for a neighbour), the same
  model and batch. Each session trains a warm-up step, then `steps` timed steps in `rounds`
  chunks, the settings' order alternating by round; a checkpoint is written inside the step whose
  forward it precedes, so its cost is in that step's time. Reported: each setting's step time
  (median and quartiles: the step without a checkpoint) and its mean (with the checkpoints'
  cost spread over all steps), the mean as a multiple of no checkpoints', and the checkpoints
  written.
* Checkpoint size (bytes on disk, per file) and the time of one checkpoint (`checkpoint_repeats`
  explicit `SplitModel.checkpoint` calls: the edge's export, the files written and fsynced,
  read back and verified).
* Time from an edge kill to the first resumed step: an edge process (A) trains with checkpoints
  every step and is killed with SIGKILL; measured are the time until the device's next call
  fails, `SplitModel.from_checkpoint` on a running edge (B: load the device spans, open the
  session, restore both sides) and the first resumed step. `kill_repeats` kills, a fresh A each
  (every edge process starts at the beginning, together).

Plaintext loopback (the bytes and the disk, not TLS, decide these figures); checkpoints go to a
temporary directory on this machine's disk.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from device_client import EdgeConnection, SplitModel
from device_client.retry import RetryPolicy
from splitft.bench.common import BenchModelConfig, split_model, spread, torch_threads, train_step
from splitft.bench.tables import markdown_report, spread_text
from splitft.errors import InvalidArgument, SplitftError
from splitft.local.launch import EdgeProcess
from splitft.testing.tiny import make_batch, save_tiny_model

logger = logging.getLogger(__name__)


@dataclass
class ResumeBenchConfig(BenchModelConfig):
    """`bench step`'s model shape at a smaller default size (the timed steps are many)."""

    layers: int = 6
    hidden: int = 256
    batch: int = 4
    tokens: int = 64
    every: tuple[int, ...] = (1, 10, 100)  # checkpoint intervals compared with none
    steps: int = 100  # timed steps per setting
    rounds: int = 5  # chunks the timed steps are cut into, the settings' order alternating
    checkpoint_repeats: int = 5
    kill_repeats: int = 3
    # How long the device retries a dead edge before it resumes elsewhere (its `RetryPolicy` budget):
    # part of the time from the kill to the first resumed step, so the report gives it.
    retry_budget_s: float = 1.0
    edge_args: tuple[str, ...] = field(default_factory=tuple)  # extra `edge serve` flags

    def __post_init__(self) -> None:
        super().__post_init__()
        self.every = tuple(int(n) for n in self.every)
        if not self.every or min(self.every) < 1:
            raise InvalidArgument("every needs at least one checkpoint interval, each >= 1")
        if min(self.steps, self.rounds, self.checkpoint_repeats, self.kill_repeats) < 1:
            raise InvalidArgument("steps, rounds, checkpoint_repeats and kill_repeats must be >= 1")
        if self.steps % self.rounds:
            raise InvalidArgument(f"steps ({self.steps}) must be a multiple of rounds ({self.rounds})")


def run_resume_bench(config: ResumeBenchConfig) -> str:
    """Run the benchmark and return its JSON report."""
    with torch_threads(config.threads), tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tiny = save_tiny_model(config.family, root / "model", layers=config.layers, hidden=config.hidden)
        batch = make_batch(config.family, torch.Generator().manual_seed(0), config.batch, config.tokens)
        serve = ("--batching", "off", *config.edge_args)
        edges = [
            EdgeProcess([f"bench={tiny.path}"], threads=config.threads, extra_args=serve)
            for _ in range(1 + config.kill_repeats)
        ]
        with ExitStack() as stack, ThreadPoolExecutor(len(edges)) as starting:
            for edge in edges:
                stack.callback(edge.stop)
            list(starting.map(lambda edge: edge.start(), edges))  # at once: most of it is imports
            healthy, doomed = edges[0], edges[1:]
            steps, checkpoint = _step_times(tiny.path, healthy.address, config, batch, root)
            kill = [
                _kill_and_resume(tiny.path, edge, healthy.address, config, batch, root / f"kill-{i}")
                for i, edge in enumerate(doomed)
            ]
    report = {
        "benchmark": "resume",
        "config": asdict(config),
        "step_seconds": steps,
        "checkpoint": checkpoint,
        "kill_to_first_resumed_step": {key: spread([k[key] for k in kill]) for key in kill[0]},
    }
    return json.dumps(report, indent=2)


def _label(every: int) -> str:
    return f"every {every}" if every else "none"


def _step_times(
    path: Path, address: str, config: ResumeBenchConfig, batch: dict, root: Path
) -> tuple[dict[str, Any], dict[str, Any]]:
    settings = (0, *config.every)
    times: dict[int, list[float]] = {every: [] for every in settings}
    with EdgeConnection(address, insecure=True) as conn:
        models = {every: split_model(path, conn, config, edge_model="bench") for every in settings}
        for every, (model, optimizer) in models.items():
            if every:
                model.checkpoint_every(every, root / f"every-{every}")
            train_step(model, optimizer, batch)  # warm-up (and, with checkpoints, the step-0 one)
        chunk = config.steps // config.rounds
        for round_index in range(config.rounds):
            order = settings if round_index % 2 == 0 else tuple(reversed(settings))
            for every in order:
                model, optimizer = models[every]
                times[every] += [train_step(model, optimizer, batch) for _ in range(chunk)]
        checkpoint = _checkpoint_cost(*models[0], root / "explicit", config.checkpoint_repeats)
        for model, _ in models.values():
            model.close()
    none_mean = sum(times[0]) / len(times[0])
    steps = {}
    for every in settings:
        mean = sum(times[every]) / len(times[every])
        steps[_label(every)] = {
            **spread(times[every]),
            "mean": round(mean, 4),
            "mean_vs_none": round(mean / none_mean, 3),
            "checkpoints_timed": sum(1 for s in range(1, config.steps + 1) if every and s % every == 0),
        }
    return steps, checkpoint


def _checkpoint_cost(model: SplitModel, optimizer: Any, root: Path, repeats: int) -> dict[str, Any]:
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        directory = model.checkpoint(root)
        seconds.append(time.perf_counter() - started)
    files = {p.name: p.stat().st_size for p in sorted(directory.iterdir())}
    return {"bytes": sum(files.values()), "files": files, "seconds": spread(seconds)}


def _kill_and_resume(
    path: Path, doomed: EdgeProcess, healthy: str, config: ResumeBenchConfig, batch: dict, root: Path
) -> dict[str, float]:
    conn = EdgeConnection(doomed.address, insecure=True, timeout=30)
    retry = RetryPolicy(budget_s=config.retry_budget_s, seed=0)
    model, optimizer = split_model(path, conn, config, edge_model="bench", retry=retry)
    model.checkpoint_every(1, root)
    for _ in range(3):
        train_step(model, optimizer, batch)
    assert doomed.process is not None
    killed = time.perf_counter()
    doomed.process.kill()
    try:
        train_step(model, optimizer, batch)
        raise InvalidArgument("the device's step succeeded against a killed edge")
    except SplitftError as exc:
        failed = time.perf_counter()
        logger.info("bench resume: the step after the kill failed with %s", exc.code.name)
    _abandon(model, conn)
    with EdgeConnection(healthy, insecure=True) as conn_b:
        started = time.perf_counter()
        resumed = SplitModel.from_checkpoint(root, edge=conn_b)
        opened = time.perf_counter()
        assert resumed.optimizer is not None
        train_step(resumed, resumed.optimizer, batch)
        done = time.perf_counter()
        resumed.close()
    return {
        "detect_seconds": round(failed - killed, 4),
        "from_checkpoint_seconds": round(opened - started, 4),
        "first_step_seconds": round(done - opened, 4),
        "total_seconds": round(done - killed, 4),
    }


def _abandon(model: SplitModel, conn: EdgeConnection) -> None:
    """Let go of a model whose edge is gone (its close cannot reach the edge)."""
    try:
        model.close()
    except SplitftError:
        pass
    conn.close()


def markdown_table(report: dict[str, Any]) -> str:
    """The step-time rows as docs/resilience.md shows them, then size and kill-to-resume lines."""
    columns = ["checkpoints", "step s median [q1-q3]", "mean step s", "mean x none"]
    columns.append("checkpoints in timed steps")
    rows = [
        (
            label,
            spread_text(row, ".4f", extremes=False),
            f"{row['mean']:.4f}",
            f"{row['mean_vs_none']:.3f}",
            row["checkpoints_timed"],
        )
        for label, row in report["step_seconds"].items()
    ]
    ckpt, kill = report["checkpoint"], report["kill_to_first_resumed_step"]
    notes = [
        f"checkpoint: {ckpt['bytes']} bytes, {ckpt['seconds']['median']:.4f} s median "
        f"[{ckpt['seconds']['min']:.4f}-{ckpt['seconds']['max']:.4f}]",
        "kill to first resumed step: "
        + ", ".join(f"{k.removesuffix('_seconds')} {v['median']:.3f} s" for k, v in kill.items()),
    ]
    return markdown_report(columns, rows, notes)
