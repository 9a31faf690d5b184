"""Choose `bench federated`'s round structure and learning rate on the VALIDATION split only.

For each rounds x local_steps (same total steps per device), learning rate and server momentum
(FedAvgM, `splitft.federated.server`; 0 is plain FedAvg), run FedAvg exactly as
`splitft bench federated` does (same task, shards, initial adapter, data streams per seed) and print
the global adapter's validation accuracy per round; the test split is never evaluated here.

    .venv/bin/python docs/scripts/federated_sweep.py --plans 10x4 20x2 40x1 --lrs 2e-3 --seeds 0 1
    .venv/bin/python docs/scripts/federated_sweep.py --plans 20x2 --lrs 2e-3 4e-3 --server-momentum 0 0.5 0.9

One JSON line per (seed, plan, lr, momentum) on stdout as each finishes.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

from splitft.bench.common import torch_threads
from splitft.bench.federated_rounds import Rounds, Shard, run_rounds
from splitft.bench.federated_train import (
    EDGE_MODEL,
    Batch,
    Encoder,
    Evaluator,
    Split,
    centralized_stream,
    initial_adapter,
    schedule_factors,
    stream,
    train_local,
)
from splitft.data.shards import dirichlet_shards
from splitft.data.stdlib_task import Example, build_stdlib_task, validation_split
from splitft.demo.sdk import default_model_dir
from splitft.federated.server import ServerOptimizer
from splitft.local.launch import EdgeProcess
from splitft.local.signals import unwind_on_sigterm


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--plans", nargs="+", default=["10x4", "20x2", "40x1"])
    parser.add_argument("--lrs", nargs="+", type=float, default=[2e-3])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--server-momentum", nargs="+", type=float, default=[0.0])
    parser.add_argument("--server-lr", type=float, default=1.0)
    parser.add_argument("--devices", type=int, default=4)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--local-optimizer", choices=("fresh", "kept"), default="fresh")
    parser.add_argument("--lr-schedules", nargs="+", default=["constant"], help="constant, linear, cosine")
    parser.add_argument(
        "--centralized",
        action="store_true",
        help="instead of FedAvg: one device with all the data, devices x rounds x local steps steps",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    model_dir = Path(default_model_dir())
    full = build_stdlib_task(max_per_class=160)  # the bench's defaults
    train, validation = validation_split(full.train, 0.15)
    encode = Encoder(model_dir, 48)
    labels = [e.label for e in train]
    edge_args = [f"{EDGE_MODEL}={model_dir}"]
    with torch_threads(1), tempfile.TemporaryDirectory(prefix="splitft-sweep-") as tmp:
        with EdgeProcess(edge_args, threads=1, log_path=str(Path(tmp) / "edge.log")) as edge:
            for seed in args.seeds:
                indices = dirichlet_shards(labels, args.devices, args.alpha, seed)
                for plan in args.plans:
                    rounds, local = (int(x) for x in plan.split("x"))
                    shards = [
                        Shard(
                            len(ix), stream([train[i] for i in ix], 8, seed * 100 + k, encode, rounds * local)
                        )
                        for k, ix in enumerate(indices)
                    ]
                    settings = itertools.product(args.lrs, args.server_momentum, args.lr_schedules)
                    for lr, momentum, schedule in settings:
                        split = Split(model_dir, edge.address, full.num_labels, lr)
                        if args.centralized:
                            steps = args.devices * rounds * local
                            everything, device = centralized_stream(train, 8, seed, encode, steps)
                            row = _centralized(
                                split, everything, validation, encode, (seed, device), schedule, Path(tmp)
                            )
                            labels_ = {"seed": seed, "plan": plan, "lr": lr, "lr_schedule": schedule}
                            sys.stdout.write(json.dumps({**labels_, "centralized": True, **row}) + "\n")
                            sys.stdout.flush()
                            continue
                        server = ServerOptimizer(args.server_lr, momentum)
                        kept = args.local_optimizer == "kept"
                        rounds_plan = Rounds(
                            rounds,
                            local,
                            None,
                            seed,
                            server=server,
                            kept_optimizer=kept,
                            lr_schedule=schedule,
                        )
                        row = _one(split, shards, validation, encode, rounds_plan, Path(tmp))
                        labels_ = {
                            "seed": seed,
                            "plan": plan,
                            "lr": lr,
                            "server_momentum": momentum,
                            "local_optimizer": args.local_optimizer,
                            "lr_schedule": schedule,
                        }
                        sys.stdout.write(json.dumps({**labels_, "server_lr": args.server_lr, **row}) + "\n")
                        sys.stdout.flush()


def _one(
    split: Split,
    shards: list[Shard],
    validation: tuple[Example, ...],
    encode: Encoder,
    plan: Rounds,
    tmp: Path,
) -> dict[str, object]:
    """FedAvg of `plan` from the seed's initial adapter: the validation curve, never the test split."""
    name = f"s{plan.seed}-{plan.rounds}x{plan.local_steps}-{split.lr}-m{plan.server.momentum}"
    out = tmp / f"{name}-{'kept' if plan.kept_optimizer else 'fresh'}-{plan.lr_schedule}"
    start = initial_adapter(split, out / "initial", plan.seed)
    evaluator = Evaluator(split, start, (), validation, encode)  # no test set: NaN if ever asked
    began = time.perf_counter()
    curve = [
        row["validation_accuracy"] for row in run_rounds(plan, split, start, shards, evaluator, out)["rounds"]
    ]
    tail = curve[-max(1, plan.rounds // 4) :]
    return {
        "validation_final": curve[-1],
        "validation_last_quarter_mean": round(sum(tail) / len(tail), 4),
        "curve": curve,
        "seconds": round(time.perf_counter() - began, 1),
    }


def _centralized(
    split: Split,
    everything: list[Batch],
    validation: tuple[Example, ...],
    encode: Encoder,
    seeds: tuple[int, int],
    schedule: str,
    tmp: Path,
) -> dict[str, object]:
    """The bench's centralized variant (`seeds`: the run's seed and the centralized device's), on
    validation only."""
    seed, device = seeds
    out = tmp / f"s{seed}-centralized-{split.lr}-{schedule}"
    start = initial_adapter(split, out / "initial", seed)
    evaluator = Evaluator(split, start, (), validation, encode)
    began = time.perf_counter()
    factors = schedule_factors(schedule, len(everything))
    run = train_local(split, start, everything, out / "all-steps", device, lr_factors=factors)
    return {
        "validation_final": round(evaluator.accuracy(run.adapter, "validation"), 4),
        "seconds": round(time.perf_counter() - began, 1),
    }


if __name__ == "__main__":
    unwind_on_sigterm()  # a killed run stops its edge process too
    main()
