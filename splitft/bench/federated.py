"""`splitft bench federated`: does cooperation pay on non-IID data? Side by side in one run, on the
demo's task and model (all-MiniLM-L6-v2 split k=2, j=1, LoRA r=8 on both sides) over ONE local edge
process, with the training data split across `devices` by Dirichlet(alpha) class shares:

* independent: each device trains its own adapter on its own shard (mean and worst device);
* FedAvg: `rounds` rounds; each round every device builds a split model, loads the global adapter
  (`SplitModel.load_adapter`), trains `local_steps` steps, saves its adapter (`save_adapter`), and
  the bench averages the state dicts by example count (`splitft.federated.fedavg`);
* AirComp at each `snr_db` (Rayleigh fading, truncation "auto"): the same rounds aggregated over
  the simulated air, each device transmitting its update (its adapter minus the round's global
  adapter: `splitft.federated.adapters.aggregate_states` with that reference), each SNR its own
  trajectory; per round the error against FedAvg, split into the devices left out and the noise;
* centralized: one device with all the training data, as many optimizer steps as all the devices
  together (`devices * rounds * local_steps`: the same compute and examples seen as FedAvg), and, for
  reference, as many as one device (`rounds * local_steps`).

Every device takes the same number of optimizer steps, `rounds * local_steps`, in every variant,
and sees the same batches in the same order (its own data stream); every variant starts from one
common initial adapter. The fedavg and aircomp rows aggregate the whole adapter (device and trunk
parts): the job mode's `trunk_adapter: "averaged"`. The fedavg_shared row is `trunk_adapter:
"shared"`: one trunk adapter per round on the edge, stepped by every device in turn (the devices
train one after another here), FedAvg of the device parts. Repeated over `seeds` seeds (shards,
initialisation, data order and channel all follow the seed), variants in alternating order.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from device_client.optim import lr_factor
from splitft.bench.common import torch_threads
from splitft.bench.federated_report import summarize
from splitft.bench.federated_rounds import Rounds, Shard, run_rounds
from splitft.bench.federated_train import (
    EDGE_MODEL,
    Encoder,
    Evaluator,
    Split,
    centralized_stream,
    initial_adapter,
    schedule_factors,
    stream,
    train_local,
)
from splitft.data.shards import dirichlet_shards, shard_histogram
from splitft.data.stdlib_task import Example, build_stdlib_task, validation_split
from splitft.demo.sdk import default_model_dir
from splitft.errors import InvalidArgument
from splitft.federated.server import ServerOptimizer, check_server_optimizer
from splitft.local.launch import EdgeProcess

logger = logging.getLogger(__name__)

QUICK: dict[str, Any] = dict(
    rounds=2, local_steps=2, batch_size=4, max_length=32, max_per_class=24, seeds=1, snr_db=(20.0,)
)


@dataclass
class FederatedBenchConfig:
    devices: int = 4
    alpha: float = 0.5  # Dirichlet concentration of the devices' class shares
    # 20 rounds of 2 (40 steps per device, 160 for centralized), chosen on the validation split over
    # 10x4, 20x2 and 40x1 (docs/scripts/federated_sweep.py, docs/federated.md); 3x5 was far from converged
    rounds: int = 20
    local_steps: int = 2  # optimizer steps per device and round
    batch_size: int = 8
    max_length: int = 48
    max_per_class: int = 160  # stdlib docstrings per package (4 packages, as the demo), 20% held out
    validation_fraction: float = 0.15  # of each class's training data: the validation split
    lr: float = 2e-3  # AdamW, fresh each round (as a device agent starts each round)
    lr_schedule: str = "constant"  # over each device's `steps` (a federated device's: across its rounds)
    server_lr: float = 1.0  # the server's step after aggregation (`splitft.federated.server`); 1 and
    server_momentum: float = 0.0  # 0: plain FedAvg; every federated row (fedavg, shared, AirComp)
    seeds: int = 3  # seeds first_seed .. first_seed + seeds - 1
    first_seed: int = 0  # > 0: the rest of a run split over processes (merge with `--merge`)
    snr_db: tuple[float, ...] = (0.0, 10.0, 20.0)
    shared_trunk: bool = True  # False: no fedavg_shared row (a long run on a loaded machine)
    threads: int = 1  # torch threads here and in the edge process
    model_dir: str | None = None  # None: the packaged all-MiniLM-L6-v2

    def __post_init__(self) -> None:
        self.snr_db = tuple(float(s) for s in self.snr_db)
        if min(self.devices, self.rounds, self.local_steps, self.batch_size, self.seeds, self.threads) < 1:
            raise InvalidArgument("devices, rounds, local_steps, batch_size, seeds and threads must be >= 1")
        if self.max_length < 8 or self.max_per_class < 2:
            raise InvalidArgument("max_length must be >= 8 and max_per_class >= 2")
        if not (self.alpha > 0 and self.lr > 0):
            raise InvalidArgument("alpha and lr must be > 0")
        if self.first_seed < 0:
            raise InvalidArgument("first_seed must be >= 0")
        check_server_optimizer(self.server_lr, self.server_momentum)
        lr_factor(self.lr_schedule, 0, 0, 1)  # an unknown schedule refused, naming the choices
        if not 0 < self.validation_fraction < 1:
            raise InvalidArgument("validation_fraction must lie strictly between 0 and 1")

    @property
    def steps(self) -> int:
        """Optimizer steps per device in every variant."""
        return self.rounds * self.local_steps


def run_federated_bench(config: FederatedBenchConfig) -> str:
    """Run the benchmark and return its JSON report."""
    started, load_before = time.perf_counter(), _load()
    model_dir = Path(config.model_dir or default_model_dir())
    full = build_stdlib_task(max_per_class=config.max_per_class)
    train, validation = validation_split(full.train, config.validation_fraction)
    task = Task(full.num_labels, train, validation, full.heldout)
    encode = Encoder(model_dir, config.max_length)
    runs = []
    with torch_threads(config.threads), tempfile.TemporaryDirectory(prefix="splitft-bench-fed-") as tmp:
        edge_args = [f"{EDGE_MODEL}={model_dir}"]
        with EdgeProcess(edge_args, threads=config.threads, log_path=str(Path(tmp) / "edge.log")) as edge:
            split = Split(model_dir, edge.address, task.num_labels, config.lr)
            for seed in range(config.first_seed, config.first_seed + config.seeds):
                logger.info("bench federated: seed %d", seed)
                runs.append(_run_seed(config, split, task, encode, seed, Path(tmp) / f"seed-{seed}"))
    report = {
        "benchmark": "federated",
        "config": asdict(config),
        "steps_per_device": config.steps,
        "examples": {"train": len(task.train), "validation": len(task.validation), "test": len(task.test)},
        "load_average": {"before": load_before, "after": _load(), "cpus": os.cpu_count()},
        "seeds": runs,
        **summarize(runs, config),
        "seconds": round(time.perf_counter() - started, 1),
    }
    return json.dumps(report, indent=2)


def _load() -> list[float]:
    """The 1, 5 and 15 minute load averages (what `uptime` prints), to label the figures."""
    return [round(x, 2) for x in os.getloadavg()]


def _variants(config: FederatedBenchConfig, seed: int) -> list[str]:
    names = [
        "independent",
        "fedavg",
        *(["fedavg_shared"] if config.shared_trunk else []),
        *[f"aircomp_{s:g}db" for s in config.snr_db],
        "centralized",
    ]
    return names if seed % 2 == 0 else names[::-1]  # alternating order over seeds


@dataclass(frozen=True)
class Task:
    """The demo task's three disjoint splits: train (sharded over the devices), validation (carved
    from the task's training data: curves and choices) and test (the task's held-out split: the
    reported accuracy, never used for a choice)."""

    num_labels: int
    train: tuple[Example, ...]
    validation: tuple[Example, ...]
    test: tuple[Example, ...]


def _run_seed(
    config: FederatedBenchConfig, split: Split, task: Task, encode: Encoder, seed: int, tmp: Path
) -> dict[str, Any]:
    labels = [e.label for e in task.train]
    indices = dirichlet_shards(labels, config.devices, config.alpha, seed)
    shards = [
        Shard(len(ix), stream([task.train[i] for i in ix], config.batch_size, seed * 100 + k, encode, steps))
        for k, ix in enumerate(indices)
        for steps in [config.steps]
    ]
    start = initial_adapter(split, tmp / "initial", seed)
    evaluator = Evaluator(split, start, task.test, task.validation, encode)
    results: dict[str, Any] = {}
    for name in _variants(config, seed):
        began = time.perf_counter()
        if name == "independent":
            results[name] = _independent(
                split, start, shards, evaluator, tmp / name, seed, config.lr_schedule
            )
        elif name == "centralized":
            results[name] = _centralized(config, split, start, task, encode, evaluator, tmp / name, seed)
        else:
            snr = None if name.startswith("fedavg") else float(name.split("_")[1][:-2])
            server = ServerOptimizer(config.server_lr, config.server_momentum)
            plan = Rounds(
                config.rounds,
                config.local_steps,
                snr,
                seed,
                name == "fedavg_shared",
                server=server,
                lr_schedule=config.lr_schedule,
            )
            results[name] = run_rounds(plan, split, start, shards, evaluator, tmp / name)
        results[name]["seconds"] = round(time.perf_counter() - began, 1)
        # each variant's figures as soon as they exist: a long run cut short still tells what it got
        logger.info("bench federated: seed %d %s: %s", seed, name, json.dumps(results[name]))
    return {
        "seed": seed,
        "order": _variants(config, seed),
        "shards": [dict(sorted(h.items())) for h in shard_histogram(labels, indices)],
        "initial_accuracy": round(evaluator.accuracy(start), 4),
        "initial_validation_accuracy": round(evaluator.accuracy(start, "validation"), 4),
        "results": results,
    }


def _independent(
    split: Split, start: Path, shards: list[Shard], evaluator: Evaluator, out: Path, seed: int, schedule: str
) -> dict[str, Any]:
    """Each device alone: all its steps on its own data, from the common initial adapter."""
    accuracies, validation = [], []
    for k, shard in enumerate(shards):
        factors = schedule_factors(schedule, len(shard.batches))
        run = train_local(
            split, start, shard.batches, out / f"device-{k}", seed * 100 + k, lr_factors=factors
        )
        accuracies.append(round(evaluator.accuracy(run.adapter), 4))
        validation.append(round(evaluator.accuracy(run.adapter, "validation"), 4))
    return {
        "per_device": accuracies,
        "mean": round(sum(accuracies) / len(accuracies), 4),
        "worst": min(accuracies),
        "validation_per_device": validation,
        "validation_mean": round(sum(validation) / len(validation), 4),
    }


def _centralized(
    config: FederatedBenchConfig,
    split: Split,
    start: Path,
    task: Task,
    encode: Encoder,
    evaluator: Evaluator,
    out: Path,
    seed: int,
) -> dict[str, Any]:
    """One device with all the training data: as many steps as all devices together, and as one."""
    everything, seed = centralized_stream(
        task.train, config.batch_size, seed, encode, config.devices * config.steps
    )
    factors = schedule_factors(config.lr_schedule, len(everything))
    total = train_local(split, start, everything, out / "all-steps", seed, lr_factors=factors)
    factors = schedule_factors(config.lr_schedule, config.steps)  # the same schedule over its own steps
    one = train_local(
        split, start, everything[: config.steps], out / "one-device-steps", seed, lr_factors=factors
    )
    return {
        "accuracy": round(evaluator.accuracy(total.adapter), 4),
        "validation_accuracy": round(evaluator.accuracy(total.adapter, "validation"), 4),
        "steps": len(everything),
        "mean_loss": round(total.mean_loss, 4),
        "accuracy_one_device_steps": round(evaluator.accuracy(one.adapter), 4),
        "validation_accuracy_one_device_steps": round(evaluator.accuracy(one.adapter, "validation"), 4),
        "one_device_steps": config.steps,
    }
