"""A whole splitft deployment on one machine, in real processes: control plane, edges, device agents.

Used by `splitft demo --loop` and the end-to-end tests: the control plane (SQLite in a data dir, or a
given URL) serving HTTPS, edges registered with it over mutual TLS, and device agents enrolled with
CSRs (their enrollment tokens pin the deployment CA), all talking over loopback.
"""

from __future__ import annotations

import io
import json
import logging
import os
import secrets
import subprocess
import sys
import tarfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from splitft.data.stdlib_task import Example
from splitft.errors import Unavailable
from splitft.local.launch import ControlProcess, EdgeProcess, free_port, terminate
from splitft.security.certs import CertPaths, init_ca, issue_device

logger = logging.getLogger(__name__)
FINAL_STATES = ("succeeded", "failed", "cancelled")


@dataclass
class LocalLoop:
    """Start with `start()`, stop everything with `stop()` (or use it as a context manager)."""

    root: Path
    heartbeat_interval: float = 1.0
    heartbeat_timeout: float = 6.0
    db_url: str | None = None
    operator_key: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    edge_secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    control: ControlProcess | None = None
    edges: dict[str, EdgeProcess] = field(default_factory=dict)
    agents: list[subprocess.Popen] = field(default_factory=list)

    @property
    def certs(self) -> Path:
        return self.root / "data" / "certs"

    def start(self, control_port: int | None = None) -> LocalLoop:
        if not (self.certs / "ca.pem").is_file():
            init_ca(self.certs, ["127.0.0.1", "localhost"])
            issue_device(self.certs, "healthcheck")  # the edges' health probe is an mTLS client too
        self.control = ControlProcess(
            self.root / "data",
            operator_key=self.operator_key,
            edge_secret=self.edge_secret,
            port=control_port,
            db_url=self.db_url,
            certs_dir=self.certs,
            tls_dir=self.certs,  # HTTPS, verified by everyone against the deployment CA
            log_path=str(self.root / "control.log"),
            env={
                "SPLITFT_HEARTBEAT_INTERVAL": str(self.heartbeat_interval),
                "SPLITFT_HEARTBEAT_TIMEOUT": str(self.heartbeat_timeout),
                "SPLITFT_SCHEDULE_INTERVAL": "0.5",
            },
        ).start()
        return self

    def restart_control(self, *, crash: bool = True) -> None:
        """Kill (or stop) the control plane and start it again on the same port and database."""
        assert self.control is not None
        port = self.control.port
        self.control.kill() if crash else self.control.stop()
        self.control = None
        self.start(control_port=port)

    @property
    def url(self) -> str:
        assert self.control is not None
        return self.control.url

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.operator_key}", **kwargs.pop("headers", {})}
        assert self.control is not None
        verify = self.control.verify
        response = httpx.request(
            method, self.url + path, headers=headers, timeout=30, verify=verify, **kwargs
        )
        if response.status_code >= 400:
            raise Unavailable(f"{method} {path} -> {response.status_code}: {response.text[:300]}")
        return response

    def start_edge(self, name: str, model_args: list[str], extra_args: Sequence[str] = ()) -> EdgeProcess:
        edge = self.edge_process(name, model_args, extra_args).start()
        self.edges[name] = edge
        return edge

    def edge_process(self, name: str, model_args: list[str], extra_args: Sequence[str] = ()) -> EdgeProcess:
        """The (unstarted) edge `start_edge` runs: registered with this loop's control plane
        (`extra_args`: more `edge serve` options, e.g. `--quantize int8`)."""
        paths = CertPaths(self.certs)
        return EdgeProcess(
            model_args,
            port=free_port(),
            log_path=str(self.root / f"edge-{name}.log"),
            tls=(
                str(self.certs),
                str(paths.device_cert("healthcheck")),
                str(paths.device_key("healthcheck")),
            ),
            extra_args=["--control-plane", self.url, "--edge-name", name, "--threads", "1", *extra_args],
            # Not on the command line: `ps` would show it, and one starting with "-" reads as an option.
            env={"SPLITFT_EDGE_SECRET": self.edge_secret},
        )

    def kill_edge(self, name: str) -> None:
        """Stop an edge abruptly, as a crash would: it never says goodbye, its heartbeats stop."""
        process = self.edges.pop(name).process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def enroll_device(self, name: str) -> Path:
        """Create the device over REST and enroll it with a CSR; returns its credential file."""
        from device_client.agent.credentials import enroll

        token = self.api("POST", "/v1/devices", json={"name": name}).json()["enrollment_token"]
        path = self.root / "devices" / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        enroll(self.url, token, path)
        return path

    def start_agent(
        self,
        credential: Path,
        data: Path,
        model_arg: str,
        *,
        max_sessions: int = 1,
        threads: int = 1,
        extra_args: Sequence[str] = (),
    ) -> subprocess.Popen:
        """A device agent process; `threads` torch threads (the edge runs with one too): several
        agents with torch's default each oversubscribe a small machine, and OpenMP's busy waiting
        then slows every step many times over (the demo's 3 agents took 20 s a step on 2 cores).
        `extra_args`: more `device run` options, e.g. `--edge-retry-budget 1`."""
        name = credential.stem
        cmd = [
            sys.executable,
            "-m",
            "splitft.cli",
            "device",
            "run",
            "--credential",
            str(credential),
            "--data",
            str(data),
            "--model-dir",
            model_arg,
            "--max-sessions",
            str(max_sessions),
            "--poll-interval",
            "0.5",
            "--record-dir",
            str(self.root / "records" / name),
            *extra_args,
        ]
        log = open(self.root / f"agent-{name}.log", "ab")  # noqa: SIM115 - lives as long as the process
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        process = subprocess.Popen(cmd, stdout=log, stderr=log, env=env)
        self.agents.append(process)
        return process

    def create_job(self, spec: dict[str, Any]) -> dict[str, Any]:
        return self.api("POST", "/v1/jobs", json=spec).json()

    def job(self, job_id: str) -> dict[str, Any]:
        return self.api("GET", f"/v1/jobs/{job_id}").json()

    def wait_job(
        self, job_id: str, states: tuple[str, ...] = FINAL_STATES, timeout: float = 300.0, until: Any = None
    ) -> dict[str, Any]:
        """Poll the job until it reaches one of `states` (or `until(job)` holds)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                job = self.job(job_id)
            except (httpx.HTTPError, Unavailable):
                time.sleep(0.5)
                continue
            if until(job) if until else job["state"] in states:
                return job
            time.sleep(0.5)
        raise Unavailable(
            f"job {job_id} did not get there in {timeout:.0f} s; last: {json.dumps(self.job(job_id))}"
        )

    def download_adapter(self, job_id: str, device: str, dest: Path) -> Path:
        data = self.api("GET", f"/v1/jobs/{job_id}/adapters/{device}").content
        dest.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            tar.extractall(dest, filter="data")
        return dest

    def stop(self) -> None:
        for process in self.agents:
            terminate(process, timeout=10)
        for edge in list(self.edges.values()):
            edge.stop()
        self.edges.clear()
        if self.control is not None:
            self.control.stop()

    def __enter__(self) -> LocalLoop:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def write_jsonl(examples: list[Example] | tuple[Example, ...], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": e.text, "label": e.label}) + "\n" for e in examples))
    return path
