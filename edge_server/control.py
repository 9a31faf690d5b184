"""An edge's link to the control plane: register once, then heartbeat with its load until stopped."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from splitft.errors import InvalidArgument, Unavailable
from splitft.trust import check_control_url, control_client

logger = logging.getLogger(__name__)


@dataclass
class Registration:
    edge_id: str
    credential: str
    issuer_public_pem: bytes
    heartbeat_interval: float


class ControlPlaneLink:
    """Registers this edge (address, models, capacity) and keeps its heartbeat going."""

    def __init__(
        self,
        url: str,
        secret: str,
        *,
        name: str,
        address: str,
        models: list[str],
        max_sessions: int,
        http: httpx.Client | None = None,
        ca_pem: bytes | None = None,
        insecure: bool = False,
    ) -> None:
        """`ca_pem` verifies the control plane's HTTPS (None: the system's trust store); plaintext
        http:// to another host is refused unless `insecure`."""
        self.url = check_control_url(url, insecure=insecure)
        if not secret:
            raise InvalidArgument("--edge-secret is required with --control-plane")
        self.secret = secret
        self.body = {
            "name": name,
            "address": address,
            "models": models,
            "capacity": {"max_sessions": max_sessions, "memory_free_bytes": 0},
        }
        self.http = http or control_client(ca_pem, timeout=10)
        self.registration: Registration | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def register(self) -> Registration:
        response = self._post("/v1/edges/register", self.body, self.secret)
        data = response.json()
        self.registration = Registration(
            data["id"],
            data["credential"],
            data["token_issuer_public_key"].encode(),
            float(data["heartbeat_interval_seconds"]),
        )
        logger.info("registered with the control plane %s as edge %s", self.url, self.registration.edge_id)
        return self.registration

    def start(self, active_sessions: Callable[[], int]) -> None:
        self._thread = threading.Thread(
            target=self._loop, args=(active_sessions,), name="heartbeat", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self, active_sessions: Callable[[], int]) -> None:
        assert self.registration is not None
        while not self._stop.wait(self.registration.heartbeat_interval):
            try:
                self._post(
                    f"/v1/edges/{self.registration.edge_id}/heartbeat",
                    {"active_sessions": active_sessions()},
                    self.registration.credential,
                )
            except Unavailable as exc:
                logger.warning("heartbeat failed: %s", exc)

    def _post(self, path: str, body: dict, token: str) -> httpx.Response:
        try:
            response = self.http.post(
                self.url + path, json=body, headers={"Authorization": f"Bearer {token}"}
            )
        except httpx.HTTPError as exc:
            raise Unavailable(f"control plane {self.url} unreachable: {exc}") from None
        if response.status_code >= 400:
            raise Unavailable(
                f"control plane answered {response.status_code} to {path}: {response.text[:200]}"
            )
        return response
