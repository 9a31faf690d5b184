"""Plan files for tests of what consumes them (projection, recommendation, the control plane): the
figures are test inputs, not measurements; `splitft plan run` itself is tested in tests/e2e."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from splitft.plan.candidates import Candidate, CandidateResult, Measured
from splitft.plan.choice import PlanFile

MIB = 2**20


def measured(
    name_parts: dict[str, Any],
    *,
    peak_mib: float,
    loss: float,
    up: int,
    down: int,
    device_s: float,
    edge_s: float,
) -> CandidateResult:
    """A measured candidate with the given figures."""
    figures = Measured(
        device_peak_bytes=int(peak_mib * MIB),
        bytes_up=up,
        bytes_down=down,
        device_compute_s=device_s,
        edge_compute_s=edge_s,
        loopback_step_s=device_s + edge_s,
        held_out_loss=loss,
        held_out_accuracy=0.5,
        train_steps=4,
    )
    return CandidateResult(candidate=Candidate(**name_parts), status="measured", measured=figures)


# Three points with a real trade-off: BIG is the most accurate and needs memory; SMALL fits little
# memory; WIRE sends the fewest bytes (a slow link's choice) at a loss within 5% of BIG's.
BIG = {"device_layers": 2, "head_layers": 1, "lora_r": 8, "activations": "raw", "gradients": "raw"}
SMALL = {
    "device_layers": 1,
    "head_layers": 0,
    "lora_r": 4,
    "activations": "raw",
    "gradients": "raw",
    "precision": "int8",
}
WIRE = {"device_layers": 2, "head_layers": 1, "lora_r": 8, "activations": "int8", "gradients": "int8"}


def plan_file(model: str = "tiny-bert") -> PlanFile:
    """A plan of three measured candidates and one refused one."""
    return PlanFile(
        model=model,
        created_at=datetime(2026, 11, 30, tzinfo=timezone.utc),
        num_layers=6,
        host_flops=1e10,
        candidates=[
            measured(BIG, peak_mib=400, loss=1.00, up=1_000_000, down=1_000_000, device_s=0.2, edge_s=0.1),
            measured(SMALL, peak_mib=100, loss=1.30, up=1_000_000, down=1_000_000, device_s=0.1, edge_s=0.2),
            measured(WIRE, peak_mib=400, loss=1.04, up=250_000, down=250_000, device_s=0.25, edge_s=0.1),
            CandidateResult(
                candidate=Candidate(device_layers=5, head_layers=1, lora_r=4),
                status="refused",
                reason="split k=5, j=1 leaves no trunk block",
            ),
        ],
    )
