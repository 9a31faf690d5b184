"""`bench federated`'s rounds, simulated in one process: every device starts each round from the
global adapter, trains its local steps through the SDK and saves its adapter; the adapters' state
dicts are aggregated by example count with `splitft.federated` (FedAvg, or AirComp at an SNR).

With a shared trunk adapter (`trunk_adapter: "shared"`), every device of a round joins ONE trunk
adapter on the edge (key `bench-s<seed>/r<round>`); the devices train one after another, so each
continues the trunk where the one before left it (SplitLoRA's sequential server updates). The
device parts are aggregated; the trunk part is the latest export's (`splitft.federated.shared_trunk`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device_client.optim import lr_factor
from splitft.bench.federated_train import (
    WEIGHTS,
    Batch,
    Evaluator,
    LocalRun,
    Split,
    read_state,
    schedule_factors,
    train_local,
    write_state,
)
from splitft.errors import FailedPrecondition, InvalidArgument
from splitft.federated import DEFAULT_TRUNCATION, Channel, fedavg
from splitft.federated.adapters import aggregate_states
from splitft.federated.server import ServerOptimizer, server_step
from splitft.federated.shared_trunk import read_trunk_marks, split_shared
from splitft.federated.truncation import Truncation, resolve_truncation

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Shard:
    """One device's data: its example count (its FedAvg weight) and its training batches in order."""

    examples: int
    batches: list[Batch]


@dataclass(frozen=True)
class Rounds:
    rounds: int
    local_steps: int
    snr_db: float | None  # None: FedAvg; else AirComp at this SNR (Rayleigh fading)
    seed: int
    shared_trunk: bool = False  # one trunk adapter per round on the edge, stepped by every device
    truncation: Truncation = DEFAULT_TRUNCATION  # AirComp: the gain below which a device sits out, or "auto"
    server: ServerOptimizer = ServerOptimizer()  # the server's step after aggregation (default: none)
    kept_optimizer: bool = False  # each device continues its own optimizer state across rounds
    lr_schedule: str = "constant"  # over each device's rounds x local_steps steps (lr_factor's names)

    def __post_init__(self) -> None:
        lr_factor(self.lr_schedule, 0, 0, 1)  # an unknown name refused here, naming the choices
        if self.kept_optimizer and self.shared_trunk:
            raise InvalidArgument(
                "a kept local optimizer needs an averaged trunk adapter: a shared one is the job's "
                "(its optimizer state is the edge's, stepped by every device)"
            )


def run_rounds(
    plan: Rounds, split: Split, start: Path, shards: list[Shard], evaluator: Evaluator, out: Path
) -> dict[str, Any]:
    """`plan.rounds` rounds from `start`; the final global adapter's accuracy and each round's figures."""
    weights = [float(shard.examples) for shard in shards]
    schedule = schedule_factors(plan.lr_schedule, plan.rounds * plan.local_steps)  # each round cuts it
    current, per_round = start, []
    stepped_from: Path | None = None  # the global the last server step started from (its momentum)
    for number in range(plan.rounds):
        steps = slice(number * plan.local_steps, (number + 1) * plan.local_steps)
        key = f"bench-s{plan.seed}/r{number}" if plan.shared_trunk else ""
        factors = schedule[steps]
        runs: list[LocalRun] = [
            train_local(split, current, shard.batches[steps], out / f"round-{number}" / f"device-{k}",
                        plan.seed * 100 + k, key, out / f"optimizer-{k}" if plan.kept_optimizer else None,
                        factors)
            for k, shard in enumerate(shards)
        ]  # fmt: skip
        states = [read_state(run.adapter) for run in runs]
        trunk: dict[str, Any] = {}
        if plan.shared_trunk:  # the device parts are aggregated; the trunk is the latest export
            marks = [read_trunk_marks(run.adapter / WEIGHTS) for run in runs]
            states, trunk = split_shared(states, marks)
        row: dict[str, Any] = {
            "round": number,
            "adapter_bytes_up": sum(run.adapter_bytes for run in runs),
            "adapter_bytes_down": 0 if number == 0 else len(runs) * (current / WEIGHTS).stat().st_size,
            "wire_bytes": sum(run.wire_bytes for run in runs),
            "mean_last_loss": round(sum(run.last_loss for run in runs) / len(runs), 4),
            "mean_loss": round(sum(run.mean_loss for run in runs) / len(runs), 4),
        }  # fmt: skip
        if plan.shared_trunk:  # every upload carries the trunk part; the aggregate uses one of them
            row["trunk_steps"] = max(m.steps for m in marks if m is not None)
            row["trunk_part_bytes"] = sum(int(v.nbytes) for v in trunk.values())
            row["redundant_trunk_bytes_up"] = (len(runs) - 1) * row["trunk_part_bytes"]
        state = _aggregate(plan, number, states, weights, row, current)
        if state is not None:
            # as the control plane: round 0 started from a fresh adapter it never saw, so no step
            previous = read_state(current) if number else None
            before = read_state(stepped_from) if stepped_from is not None else None
            state = server_step(state, previous, plan.server, before_previous=before)
            stepped_from = current if number else None
            current = write_state({**state, **trunk}, runs[0].adapter, out / f"round-{number}" / "global")
        else:
            stepped_from = None  # a lost round: the momentum restarts, as the control plane's does
        row["validation_accuracy"] = round(evaluator.accuracy(current, "validation"), 4)
        per_round.append(row)
    return {
        "accuracy": round(evaluator.accuracy(current), 4),
        "validation_accuracy": row["validation_accuracy"],
        "rounds": per_round,
    }


def _aggregate(
    plan: Rounds, number: int, states: list[Any], weights: list[float], row: dict[str, Any], start: Path
) -> Any:
    """The round's global state (None: the round is lost, every device in deep fade); AirComp's
    participants and errors go into `row`. AirComp transmits each device's update, its adapter minus
    the round's starting global adapter `start` (`aggregate_states`' reference)."""
    if plan.snr_db is None:
        return fedavg(states, weights)
    row["truncation"] = resolve_truncation(plan.truncation, plan.snr_db, len(states), "rayleigh", 1.0)
    try:
        result = aggregate_states(
            states,
            weights,
            "aircomp",
            Channel(snr_db=plan.snr_db, truncation=plan.truncation),
            plan.seed * 1000 + number,
            read_state(start),
        )
    except FailedPrecondition as exc:
        logger.warning("bench federated: AirComp round %d lost: %s", number, exc.message)
        row.update(participants=0, relative_error=None, dropout_error=None, noise_error=None)
        return None
    row.update(
        participants=len(result.participants),
        relative_error=round(result.relative_error, 6),
        dropout_error=round(result.dropout_error, 6),  # the devices left out, alone
        noise_error=round(result.noise_error, 6),  # the channel noise, alone
    )
    return result.state
