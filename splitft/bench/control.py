"""`splitft bench control`: job-status latency of a real control plane process under concurrent load.

Starts `splitft control serve` (SQLite in a temp dir, or `--db URL`), creates devices and jobs over
REST, then `clients` threads each send `requests` GET /v1/jobs/{id} over keep-alive connections on
loopback. Reports latency percentiles and throughput as JSON.
"""

from __future__ import annotations

import json
import random
import secrets
import statistics
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from splitft.errors import InvalidArgument
from splitft.local.launch import ControlProcess


@dataclass
class ControlBenchConfig:
    clients: int = 16  # concurrent client threads
    requests: int = 200  # per client
    jobs: int = 50  # jobs in the database, each with 3 device sessions
    db_url: str | None = None  # default: SQLite in a temp dir

    def __post_init__(self) -> None:
        if self.clients < 1 or self.requests < 1 or self.jobs < 1:
            raise InvalidArgument("clients, requests and jobs must be >= 1")


def _seed(url: str, headers: dict[str, str], jobs: int) -> list[str]:
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        devices = [f"bench-{secrets.token_hex(3)}-{i}" for i in range(3)]
        for name in devices:
            client.post("/v1/devices", json={"name": name}).raise_for_status()
        spec = {
            "model": "m",
            "device_layers": 1,
            "lora": {"target_modules": ["q"]},
            "steps": 1,
            "devices": devices,
        }
        return [client.post("/v1/jobs", json={"name": f"job-{i}", **spec}).json()["id"] for i in range(jobs)]


def _client(
    url: str, headers: dict[str, str], ids: list[str], n: int, seed: int, out: list[float], errors: list[int]
) -> None:
    rng = random.Random(seed)
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        for _ in range(n):
            started = time.perf_counter()
            status = client.get(f"/v1/jobs/{rng.choice(ids)}").status_code
            out.append(time.perf_counter() - started)
            if status != 200:
                errors.append(status)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_control_bench(config: ControlBenchConfig) -> str:
    operator_key = secrets.token_urlsafe(24)
    headers = {"Authorization": f"Bearer {operator_key}"}
    with (
        tempfile.TemporaryDirectory() as tmp,
        ControlProcess(
            Path(tmp), operator_key=operator_key, edge_secret=secrets.token_urlsafe(24), db_url=config.db_url
        ) as control,
    ):
        ids = _seed(control.url, headers, config.jobs)
        latencies: list[list[float]] = [[] for _ in range(config.clients)]
        errors: list[int] = []
        threads = [
            threading.Thread(
                target=_client, args=(control.url, headers, ids, config.requests, i, latencies[i], errors)
            )
            for i in range(config.clients)
        ]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - started
    flat = [x for per in latencies for x in per]
    report = {
        "benchmark": "control",
        "config": asdict(config) | {"db_url": config.db_url or "sqlite (temp dir)"},
        "requests": len(flat),
        "errors": len(errors),
        "latency_ms": {
            "p50": round(_percentile(flat, 0.50) * 1e3, 2),
            "p90": round(_percentile(flat, 0.90) * 1e3, 2),
            "p99": round(_percentile(flat, 0.99) * 1e3, 2),
            "mean": round(statistics.fmean(flat) * 1e3, 2),
        },
        "throughput_rps": round(len(flat) / wall, 1),
    }
    return json.dumps(report, indent=2)
