"""The device routes of the control plane: next assignment, metrics, the adapter upload, failures."""

from __future__ import annotations

import math
from typing import Any

import httpx
from pydantic import ValidationError

from device_client.agent.assignment import parse_assignment
from device_client.agent.credentials import DeviceCredential
from splitft.errors import Unavailable
from splitft.jobs.resume import EdgeLostAnswer, EdgeLostReport
from splitft.jobs.spec import IGNORE_UNKNOWN, Assignment
from splitft.rest import DEFAULT_HTTP_TIMEOUT, request, response_json
from splitft.security.trust import check_control_url, control_client

MAX_RETRY_AFTER = 300.0


class ControlPlaneClient:
    """The device routes of the control plane, authenticated with the device credential."""

    def __init__(
        self, credential: DeviceCredential, http: httpx.Client | None = None, *, insecure: bool = False
    ) -> None:
        # Plaintext to another host is refused unless insecure; HTTPS is verified against the CA
        # that verified the control plane at enrollment, else (a credential enrolled over loopback
        # HTTP or before HTTPS, or through a public certificate) the deployment CA and public CAs.
        self.base = check_control_url(credential.control_plane, insecure=insecure)
        self._headers = credential.auth_headers
        self._owned = http is None
        if http is None:
            anchor = credential.control_plane_ca_pem
            http = control_client(
                anchor or credential.ca_pem, public_cas=anchor is None, timeout=DEFAULT_HTTP_TIMEOUT
            )
        self.http = http

    def next_assignment(self) -> tuple[Assignment | None, float | None]:
        """The next assignment, or None and the server's Retry-After (seconds) when there is none."""
        response = request(self.http, "GET", f"{self.base}/v1/assignments/next", headers=self._headers)
        if response.status_code == 204:
            return None, _retry_after(response)
        return parse_assignment(response_json(response)), None

    def set_device_class(self, device_class: dict[str, Any]) -> None:
        """PUT this device's class (memory, link, speed), which split "auto" jobs plan it for."""
        request(self.http, "PUT", f"{self.base}/v1/device-class", headers=self._headers, json=device_class)

    def report_metrics(self, session_id: str, points: list[dict[str, Any]]) -> None:
        """POST metric points of a running session."""
        url = f"{self.base}/v1/sessions/{session_id}/metrics"
        request(self.http, "POST", url, headers=self._headers, json={"points": points})

    def complete(self, session_id: str, archive: bytes, examples: int | None = None) -> None:
        """Upload the session's adapter archive (.tar.gz), which completes the session (`examples`:
        in a federated round, the local examples its aggregation weight counts)."""
        headers = {**self._headers, "Content-Type": "application/gzip"}
        url = f"{self.base}/v1/sessions/{session_id}/complete"
        params = {"examples": examples} if examples is not None else None
        request(self.http, "POST", url, headers=headers, content=archive, params=params)

    def initial_adapter(self, session_id: str) -> bytes:
        """The adapter archive a federated session starts from (the previous round's global one)."""
        url = f"{self.base}/v1/sessions/{session_id}/initial-adapter"
        return request(self.http, "GET", url, headers=self._headers).content

    def post_secagg_key(self, session_id: str, body: dict[str, Any]) -> None:
        """Secure aggregation: offer this round's public key, layout, adapter config and examples."""
        url = f"{self.base}/v1/sessions/{session_id}/secagg/key"
        request(self.http, "POST", url, headers=self._headers, json=body)

    def secagg_members(self, session_id: str) -> tuple[dict[str, Any] | None, float | None]:
        """The round's fixed members (context, keys), or None and Retry-After while not fixed yet."""
        url = f"{self.base}/v1/sessions/{session_id}/secagg/members"
        response = request(self.http, "GET", url, headers=self._headers)
        if response.status_code == 204:
            return None, _retry_after(response)
        return response_json(response), None

    def upload_masked(self, session_id: str, data: bytes) -> None:
        """Secure aggregation: the masked update, which completes the session."""
        headers = {**self._headers, "Content-Type": "application/octet-stream"}
        url = f"{self.base}/v1/sessions/{session_id}/secagg/masked"
        request(self.http, "POST", url, headers=headers, content=data)

    def fail(self, session_id: str, reason: str) -> None:
        """Report the session failed, with a short reason."""
        url = f"{self.base}/v1/sessions/{session_id}/fail"
        request(self.http, "POST", url, headers=self._headers, json={"reason": reason})

    def edge_lost(self, session_id: str, reason: str, edge_address: str) -> EdgeLostAnswer:
        """Report the session's edge lost; the answer says whether it is placed again (resume)."""
        url = f"{self.base}/v1/sessions/{session_id}/edge-lost"
        body = EdgeLostReport(reason=reason, edge_address=edge_address).model_dump()
        raw = response_json(request(self.http, "POST", url, headers=self._headers, json=body))
        try:
            return EdgeLostAnswer.model_validate(raw, context=IGNORE_UNKNOWN)
        except ValidationError as exc:
            raise Unavailable(
                f"the control plane sent a malformed edge-lost answer: {exc.errors()[0]['msg']}"
            ) from None

    def close(self) -> None:
        """Close the HTTP client if this object created it."""
        if self._owned:
            self.http.close()


def _retry_after(response: httpx.Response) -> float | None:
    try:
        seconds = float(response.headers.get("Retry-After", ""))
    except ValueError:
        return None  # absent, or an HTTP date: fall back to the agent's own interval
    return min(max(seconds, 0.0), MAX_RETRY_AFTER) if math.isfinite(seconds) else None
