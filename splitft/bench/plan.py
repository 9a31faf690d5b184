"""`splitft plan run`: measure split candidates for a model and project them onto a device class.

One edge process serves the model (fp32, plaintext on loopback). Each candidate runs in a fresh
worker process (`splitft.bench.plan_worker`, `bench memory`'s probes), one after another so that
none disturbs another's memory or timing: it trains `train_steps` steps on the training data and
scores the held-out data. The figures per candidate (device peak memory, bytes per step, device
and edge compute per step, held-out loss) do not depend on the device class; `splitft.plan.choice`
projects them onto the class given here, marks what fits, finds the front and recommends one.

Candidates are the product of the splits, ranks, codecs and precisions asked for: the reference
(first of each list, raw/raw, fp32) first, the others in a seeded random order; `--max-candidates`
bounds how many are measured and `--budget-s` the run's wall time (what is left is reported as
skipped). A candidate that cannot run is reported with its reason, never crashes the run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import random
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from splitft.bench.plan_data import plan_data
from splitft.bench.plan_report import write_plot
from splitft.bench.worker import run_worker
from splitft.errors import InvalidArgument, NotFound
from splitft.plan.candidates import PRECISIONS, Candidate, CandidateResult, Measured
from splitft.plan.choice import DeviceClass, PlanFile, plan_for_class

logger = logging.getLogger(__name__)

RESULT_PREFIX = "SPLITFT_PLAN_RESULT "
STARTUP_S = 20.0  # a worker's imports and model load before its first estimate exists


@dataclass
class PlanConfig:
    """What `splitft plan run` measures, for which device class, within which bounds."""

    model_dir: str
    out: str
    device_class: DeviceClass
    model: str | None = None
    data: str | None = None
    max_candidates: int = 12
    budget_s: float = 900.0
    splits: list[tuple[int, int]] | None = None
    ranks: list[int] = field(default_factory=lambda: [4, 16])
    activations_codecs: list[str] = field(default_factory=lambda: ["raw", "int8"])
    gradients_codecs: list[str] = field(default_factory=lambda: ["raw", "int8"])
    precisions: list[str] = field(default_factory=lambda: list(PRECISIONS))
    train_steps: int = 12
    batch_size: int = 8
    max_length: int = 64
    eval_examples: int = 64
    lr: float = 1e-3
    loss_tolerance: float = 0.05
    threads: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if not (Path(self.model_dir) / "config.json").is_file():
            raise NotFound(f"--model-dir {self.model_dir}: no config.json there")
        if self.max_candidates < 1 or self.train_steps < 2 or self.eval_examples < 1:
            raise InvalidArgument("--max-candidates and --eval-examples must be >= 1, --train-steps >= 2")
        if min(self.batch_size, self.threads) < 1 or self.max_length < 8:
            raise InvalidArgument("--batch-size and --threads must be >= 1, --max-length >= 8")
        if not 0 <= self.loss_tolerance <= 10:
            raise InvalidArgument(f"--loss-tolerance must be in [0, 10], got {self.loss_tolerance}")
        unknown = sorted(set(self.precisions) - set(PRECISIONS))
        if unknown:
            raise InvalidArgument(f"--precisions: unknown {unknown}; known: {', '.join(PRECISIONS)}")
        if any(r < 1 for r in self.ranks) or not self.ranks:
            raise InvalidArgument("--ranks must be integers >= 1")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> PlanConfig:
        """The config from `splitft plan run`'s arguments (InvalidArgument, exit 2, for bad ones)."""
        from splitft.cli.commands.plan import device_class as class_of

        device_class = class_of(args)
        try:
            ranks = [int(r) for r in args.ranks]
        except ValueError as exc:
            raise InvalidArgument(f"plan run: {exc}") from None
        fields = {k: getattr(args, k) for k in ("model_dir", "out", "model", "data", "max_candidates")}
        fields.update({k: getattr(args, k) for k in ("budget_s", "train_steps", "batch_size", "max_length")})
        fields.update(
            {k: getattr(args, k) for k in ("eval_examples", "lr", "loss_tolerance", "threads", "seed")}
        )
        return cls(
            device_class=device_class,
            splits=_parse_splits(args.splits) if args.splits else None,
            ranks=ranks,
            activations_codecs=args.activations_codecs,
            gradients_codecs=args.gradients_codecs,
            precisions=args.precisions,
            **fields,
        )


def _parse_splits(items: list[str]) -> list[tuple[int, int]]:
    splits = []
    for item in items:
        k, sep, j = item.partition(":")
        if not sep or not k.strip().isdigit() or not j.strip().isdigit():
            raise InvalidArgument(f"--splits: expected K:J like 2:1, got {item!r}")
        splits.append((int(k), int(j)))
    return splits


def num_layers(model_dir: str) -> int:
    """The model's number of blocks, from its config.json."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(config.get(key), int):
            return int(config[key])
    raise InvalidArgument(f"--model-dir {model_dir}: config.json names no number of layers")


def default_splits(layers: int) -> list[tuple[int, int]]:
    """k in {1, 2, half the blocks}, j in {0, 1}: the splits worth a first look."""
    ks = sorted({1, 2, max(1, layers // 2)})
    return [(k, j) for k in ks for j in (0, 1)]


def candidates(config: PlanConfig, layers: int) -> list[Candidate]:
    """Every candidate asked for: the reference first, the rest in the seed's random order."""
    splits = config.splits or default_splits(layers)
    grid = itertools.product(
        splits, config.ranks, config.activations_codecs, config.gradients_codecs, config.precisions
    )
    found = [
        Candidate(device_layers=k, head_layers=j, lora_r=r, activations=a, gradients=g, precision=p)  # type: ignore[arg-type]
        for (k, j), r, a, g, p in grid
    ]
    rest = found[1:]
    random.Random(config.seed).shuffle(rest)
    return found[:1] + rest


def run_plan(config: PlanConfig) -> PlanFile:
    """Measure, project onto the class, write OUT/plan.json and OUT/front.png; the plan."""
    from splitft.bench.plan_worker import host_flops
    from splitft.local.launch import EdgeProcess

    started = time.monotonic()
    layers = num_layers(config.model_dir)
    name = config.model or Path(config.model_dir).resolve().name
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    all_candidates = candidates(config, layers)
    logger.info("plan: %d candidates for %s (%d blocks)", len(all_candidates), name, layers)
    with tempfile.TemporaryDirectory(prefix="splitft-plan-") as tmp:
        data_path = Path(tmp) / "data.json"
        data_info = plan_data(config, data_path)
        edge = EdgeProcess(
            [f"plan={config.model_dir}"], threads=config.threads, log_path=str(out / "edge.log")
        )
        with edge:
            flops = host_flops(config.threads)
            base = _worker_base(config, edge, data_path, data_info["num_labels"])
            results = _measure_all(config, all_candidates, layers, base, started)
    plan = PlanFile(
        model=name,
        created_at=datetime.now(timezone.utc),
        num_layers=layers,
        host_flops=flops,
        machine=_machine(config, data_info, time.monotonic() - started),
        candidates=results,
        loss_tolerance=config.loss_tolerance,
    )
    plan = plan_for_class(plan, config.device_class)
    (out / "plan.json").write_text(plan.model_dump_json(indent=2) + "\n")
    write_plot(plan, out / "front.png")
    logger.info("plan: wrote %s and %s", out / "plan.json", out / "front.png")
    return plan


def _worker_base(config: PlanConfig, edge: Any, data_path: Path, num_labels: int) -> dict[str, Any]:
    return {
        "model_dir": str(config.model_dir),
        "edge": edge.address,
        "edge_pid": edge.process.pid if edge.process else None,
        "edge_model": "plan",
        "data": str(data_path),
        "num_labels": num_labels,
        "train_steps": config.train_steps,
        "batch_size": config.batch_size,
        "max_length": config.max_length,
        "lr": config.lr,
        "threads": config.threads,
        "seed": config.seed,
    }


def _measure_all(
    config: PlanConfig, found: list[Candidate], layers: int, base: dict[str, Any], started: float
) -> list[CandidateResult]:
    """Each runnable candidate in its own worker, within the count and the budget."""
    results: list[CandidateResult] = []
    durations: list[float] = []
    measured = 0
    for i, candidate in enumerate(found, start=1):
        problem = candidate.problem(layers)
        if problem is not None:
            logger.info("plan: %d/%d %s refused: %s", i, len(found), candidate.name, problem)
            results.append(CandidateResult(candidate=candidate, status="refused", reason=problem))
            continue
        left = config.budget_s - (time.monotonic() - started)
        expected = max(durations) if durations else STARTUP_S
        if measured >= config.max_candidates or left < expected:
            why = "--max-candidates reached" if measured >= config.max_candidates else "--budget-s spent"
            results.append(CandidateResult(candidate=candidate, status="skipped", reason=why))
            continue
        logger.info("plan: %d/%d %s: measuring (%.0f s of budget left)", i, len(found), candidate.name, left)
        began = time.monotonic()
        results.append(_measure_one(candidate, base, timeout=left))
        durations.append(time.monotonic() - began)
        measured += 1
        _log_result(results[-1])
    return results


def _measure_one(candidate: Candidate, base: dict[str, Any], timeout: float) -> CandidateResult:
    spec = {**base, "candidate": candidate.model_dump()}
    try:
        result = run_worker(
            "splitft.bench.plan_worker", spec, prefix=RESULT_PREFIX, label=candidate.name, timeout=timeout
        )
    except RuntimeError as exc:  # the worker failed: its last error line is the reason
        lines = [line for line in str(exc).splitlines() if line.strip()]
        return CandidateResult(candidate=candidate, status="failed", reason=_reason(lines))
    except Exception as exc:  # noqa: BLE001  # e.g. the budget's timeout: reported, the run goes on
        why = f"{type(exc).__name__}: {exc}"[:2000]
        return CandidateResult(candidate=candidate, status="failed", reason=why)
    return CandidateResult(candidate=candidate, status="measured", measured=Measured(**result))


def _reason(lines: list[str]) -> str:
    """The most telling line of a failed worker's output: its exception, else the last line."""
    errors = [line for line in lines if "Error" in line or "Exception" in line or ": " in line]
    return (errors[-1] if errors else lines[-1] if lines else "worker failed")[-2000:]


def _log_result(result: CandidateResult) -> None:
    m = result.measured
    if m is None:
        logger.warning("plan: %s %s: %s", result.name, result.status, result.reason)
        return
    logger.info(
        "plan: %s: peak %.1f MiB, %d B up + %d B down per step, held-out loss %.4f",
        result.name,
        m.device_peak_bytes / 2**20,
        m.bytes_up,
        m.bytes_down,
        m.held_out_loss,
    )


def _machine(config: PlanConfig, data_info: dict[str, Any], elapsed: float) -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    settings = asdict(config)
    settings.pop("device_class")
    return {
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in load],
        "elapsed_s": round(elapsed, 1),
        "settings": settings,
        "data": data_info,
    }
