"""A real control plane process (SQLite) for the operator's tools, and the REST calls edges and devices make.

The CLI and dashboard tests drive `splitft control serve` as operators do; an edge registers and a
device takes its assignment, reports metrics and uploads its adapter through the same REST routes
the real edge and agent use (no model runs: what the operator sees comes only from these calls).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from splitft.local.launch import ControlProcess
from splitft.security.certs import CertPaths, init_ca
from tests.support.control_fixtures import EDGE_SECRET, MODEL, OPERATOR_KEY, adapter_archive, bearer


@dataclass
class RealControl:
    """A running control plane and shortcuts for the calls around the operator's."""

    process: ControlProcess
    ca: Path | None  # the deployment CA that verifies its HTTPS (None: plain HTTP on loopback)

    @property
    def url(self) -> str:
        return self.process.url

    def call(self, method: str, path: str, token: str = OPERATOR_KEY, **kwargs: Any) -> httpx.Response:
        headers = {**bearer(token), **kwargs.pop("headers", {})}
        response = httpx.request(
            method, self.url + path, headers=headers, verify=self.process.verify, timeout=30, **kwargs
        )
        assert response.status_code < 300, f"{method} {path} -> {response.status_code}: {response.text}"
        return response

    def register_edge(self, name: str, models: tuple[str, ...] = (MODEL,)) -> dict[str, Any]:
        body = {
            "name": name,
            "address": "127.0.0.1:50999",
            "models": list(models),
            "capacity": {"max_sessions": 8, "memory_free_bytes": 3 << 30},
        }
        return dict(self.call("POST", "/v1/edges/register", token=EDGE_SECRET, json=body).json())

    def enrolled_device(self, name: str) -> str:
        """Create and enroll a device; its credential."""
        token = self.call("POST", "/v1/devices", json={"name": name}).json()["enrollment_token"]
        secret = token.split(".")[0]  # the fingerprint part pins the CA; the route takes either
        return str(
            self.call("POST", "/v1/devices/enroll", json={"enrollment_token": secret}).json()["credential"]
        )

    def next_session(self, credential: str) -> str:
        response = self.call("GET", "/v1/assignments/next", token=credential)
        assert response.status_code == 200, "nothing placed for this device"
        return str(response.json()["session_id"])

    def report(self, credential: str, session: str, points: list[tuple[int, float]]) -> None:
        body = {
            "points": [
                {"step": step, "loss": loss, "examples_per_second": 20.0 + step, "bytes_sent": 1000 * step}
                for step, loss in points
            ]
        }
        self.call("POST", f"/v1/sessions/{session}/metrics", token=credential, json=body)

    def complete(self, credential: str, session: str) -> bytes:
        archive = adapter_archive()
        self.call(
            "POST",
            f"/v1/sessions/{session}/complete",
            token=credential,
            content=archive,
            headers={"Content-Type": "application/gzip"},
        )
        return archive


@contextmanager
def real_control(root: Path, *, https: bool = True) -> Iterator[RealControl]:
    """`splitft control serve` on SQLite in `root`, HTTPS with a fresh deployment CA unless `https=False`."""
    certs = root / "certs"
    if https:
        init_ca(certs, ["127.0.0.1", "localhost"])
    process = ControlProcess(
        root / "data",
        operator_key=OPERATOR_KEY,
        edge_secret=EDGE_SECRET,
        certs_dir=certs if https else None,
        tls_dir=certs if https else None,
        log_path=str(root / "control.log"),
        env={"SPLITFT_SCHEDULE_INTERVAL": "0.2", "SPLITFT_HEARTBEAT_TIMEOUT": "3600"},
    ).start()
    try:
        yield RealControl(process, CertPaths(certs).ca_cert if https else None)
    finally:
        process.stop()
