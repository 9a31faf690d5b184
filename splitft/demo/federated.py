"""The whole-loop demo's second job: the same devices, on the same non-IID shards, train ONE adapter
together in rounds (mode "federated", FedAvg); the operator evaluates the global adapter next to
each device's own adapter from the independent job that ran first."""

from __future__ import annotations

import io
import tarfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from splitft.local.loop import LocalLoop

FederatedOutcome = tuple[dict[str, Any], list[dict[str, Any]], Path, float]  # job, rounds, adapter, s


def federated_spec(independent: dict[str, Any], rounds: int, local_steps: int) -> dict[str, Any]:
    """The independent job's spec as a federated job: every device in every round (FedAvg)."""
    spec = {k: v for k, v in independent.items() if k not in ("epochs", "steps")}
    spec["name"] = f"{independent['name']}-federated"
    spec["mode"] = "federated"
    spec["federated"] = {
        "rounds": rounds,
        "local_steps": local_steps,
        "aggregation": "fedavg",
        "min_devices": len(independent["devices"]),
        "round_timeout_s": 900,
    }
    return spec


def run_federated_job(loop: LocalLoop, spec: dict[str, Any], out: Path, console: Console) -> FederatedOutcome:
    """Create the federated job, report each round as it closes; the job, its rounds, the global
    adapter's directory and the job's seconds."""
    started = time.perf_counter()
    job = loop.create_job(spec)
    fed = spec["federated"]
    console.print(
        f"[bold]federated job[/] {job['id']}: {fed['rounds']} rounds of {fed['local_steps']} local steps "
        f"per device, FedAvg weighted by example count"
    )
    reported = 0
    while True:
        job = loop.job(job["id"])
        rounds = loop.api("GET", f"/v1/jobs/{job['id']}/rounds").json()
        for done in [r for r in rounds if r["state"] != "running"][reported:]:
            loss = "-" if done["mean_loss"] is None else f"{done['mean_loss']:.3f}"
            console.print(
                f"  round {done['number']}: {done['state']}, {len(done['participants'])} devices, "
                f"mean loss {loss}, adapter bytes up {done['bytes_up']:,} / down {done['bytes_down']:,}"
            )
            reported += 1
        if job["state"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(1.0)
    seconds = time.perf_counter() - started
    dest = out / "adapters" / "federated-global"
    if job["state"] == "succeeded":
        data = loop.api("GET", f"/v1/jobs/{job['id']}/adapter").content
        dest.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            tar.extractall(dest, filter="data")
    return job, rounds, dest, seconds


def print_comparison(console: Console, summary: dict[str, Any]) -> None:
    """Each device's own (independent) adapter next to the federated job's global adapter."""
    fed = summary["federated"]
    table = Table(
        "device",
        "examples (per class)",
        "own adapter (independent job)",
        "global adapter (federated job)",
        title=f"held-out accuracy: federated job {fed['job_id']}: {fed['state']} in {fed['job_seconds']} s",
    )
    for name, row in summary["per_device"].items():
        table.add_row(
            name,
            f"{row['examples']} {row['per_class']}",
            f"{row['accuracy_after']:.1%}",
            "-" if fed["accuracy"] is None else f"{fed['accuracy']:.1%}",
        )
    console.print(table)
    if fed["accuracy"] is not None:
        own = [row["accuracy_after"] for row in summary["per_device"].values()]
        console.print(
            f"global adapter {fed['accuracy']:.1%} vs own adapters: mean {sum(own) / len(own):.1%}, "
            f"worst {min(own):.1%} (the same data; the global adapter is in {fed['adapter']})"
        )
