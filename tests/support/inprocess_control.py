"""A real control plane in the test's process, real device agents and a real edge, without processes.

The control plane is the FastAPI app on SQLite behind Starlette's `TestClient` (an `httpx.Client`
whose transport calls the app in process, so the agents' REST calls run the real routes, store and
archive checks); the edge is conftest's real gRPC edge on a loopback port; the agents are
`DeviceAgent`s whose HTTP client is that `TestClient`. Quick enough for equality tests of whole
jobs; the same flows with separate processes live in tests/e2e.
"""

from __future__ import annotations

import io
import tarfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.testclient import TestClient
from safetensors.numpy import load as load_safetensors

from device_client.agent import DeviceAgent, DeviceCredential
from splitft_control.app import create_app
from tests.support.control_fixtures import EDGE_SECRET, OPERATOR_KEY, bearer, control_settings

CP = "http://127.0.0.1:8000"  # the agents' control-plane URL; TestClient routes any host to the app
WEIGHTS = "adapter_model.safetensors"


class InProcessControl:
    """The control plane app and the operator's and edge's REST calls on it."""

    def __init__(self, data_dir: Path) -> None:
        # The edge is not linked to this control plane (no heartbeats): a long timeout keeps it up.
        settings = control_settings(data_dir, heartbeat_timeout=3600.0)
        self.client = TestClient(create_app(settings))

    def add_edge(self, name: str, address: str, models: Sequence[str]) -> None:
        body = {"name": name, "address": address, "models": list(models), "capacity": {"max_sessions": 16}}
        self._ok(self.client.post("/v1/edges/register", json=body, headers=bearer(EDGE_SECRET)))

    def add_device(self, name: str) -> DeviceCredential:
        created = self._ok(self.client.post("/v1/devices", json={"name": name}, headers=bearer(OPERATOR_KEY)))
        token = created.json()["enrollment_token"]
        enrolled = self._ok(self.client.post("/v1/devices/enroll", json={"enrollment_token": token})).json()
        return DeviceCredential(CP, enrolled["id"], enrolled["name"], enrolled["credential"])

    def agent(
        self,
        credential: DeviceCredential,
        model_dirs: dict[str, Path],
        data: Any,
        *,
        train_lock: threading.Lock | None = None,
    ) -> DeviceAgent:
        """A device agent (plaintext edge) whose REST calls go to this control plane.

        Agents that run in threads of one process share what separate devices never do: torch's
        global RNG (the agent seeds it for the common initialisation) and the span loading's global
        patches. Given one `train_lock`, they train one at a time, everything else (keys, waiting
        for peers, uploads) concurrently, as separate devices would.
        """
        agent = DeviceAgent(credential, model_dirs, data, poll_interval=0.02, http=self.client, insecure=True)
        if train_lock is not None:
            train = agent.trainer.train

            def one_at_a_time(*args: Any, **kwargs: Any) -> bytes:
                with train_lock:
                    return train(*args, **kwargs)

            agent.trainer.train = one_at_a_time  # type: ignore[method-assign]
        return agent

    def create_job(self, body: dict[str, Any]) -> str:
        response = self._ok(self.client.post("/v1/jobs", json=body, headers=bearer(OPERATOR_KEY)))
        self.schedule()
        return str(response.json()["id"])

    def schedule(self) -> None:
        self.client.app.state.control.schedule_once()  # type: ignore[attr-defined]

    def get(self, path: str) -> Any:
        return self._ok(self.client.get(path, headers=bearer(OPERATOR_KEY)))

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(self.get(f"/v1/jobs/{job_id}").json())

    @staticmethod
    def _ok(response: Any) -> Any:
        assert response.status_code < 300, f"{response.status_code}: {response.text}"
        return response


@contextmanager
def scheduler_running(control: InProcessControl, interval: float = 0.05) -> Iterator[None]:
    """Run the scheduler's pass every `interval` seconds (opens and places the next rounds)."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval):
            control.schedule()

    thread = threading.Thread(target=loop, name="test-scheduler", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def adapter_tensors(archive: bytes) -> dict[str, np.ndarray]:
    """The tensors of an adapter .tar.gz as the control plane serves it."""
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        member = tar.extractfile(WEIGHTS)
        assert member is not None
        return dict(load_safetensors(member.read()))
