"""An edge's link to the control plane: register once, then heartbeat with its load until stopped.

Registration and every heartbeat carry the edge's capacity: its session slots and, from its memory
accountant (`edge_server.admission`), its memory limit, the bytes free now, and per served model the
memory profile, a default session's bytes and how many such sessions still fit.

The control plane lets the shared edge secret register a new name only; to register its name again
(after a restart) an edge presents its own credential, kept in `credential_file`. The edge names the
credential it will hold next and keeps it (`credential_file`.next) before it asks, so a registration
whose answer was lost (the control plane killed after its commit) is retried as this edge. Each heartbeat
answer lists the sessions this edge must close and refuse to open, handed to `on_revoked`. Each
heartbeat also names the sessions the edge's TTL expired since the last one answered (`note_expired`;
their device went silent): the control plane fails them unless their device reported since, so a job
waiting on a device that vanished ends instead of waiting for an operator.

A control plane that is down or restarting (unreachable, or a 5xx) is waited for: registration is
retried with jittered backoff for `register_wait_s`, heartbeats go on at jittered intervals no
longer than the heartbeat interval until one is answered (docs/resilience.md). Refusals (4xx) and
a certificate that does not verify are raised at once."""

from __future__ import annotations

import logging
import os
import secrets
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from splitft.backoff import Backoff, ReconnectPolicy, retry_while
from splitft.errors import InvalidArgument, Unavailable
from splitft.jobs.resume import MAX_EXPIRED_PER_HEARTBEAT
from splitft.security.files import write_private_file
from splitft.security.trust import check_control_url, control_client

logger = logging.getLogger(__name__)
REGISTER = "/v1/edges/register"
REGISTER_WAIT_S = 300.0  # how long a starting edge waits for an unreachable control plane
# Expired sessions not yet reported, kept while the control plane is down; beyond it the oldest are
# dropped (their jobs then wait for an operator, as before edges reported expiries).
MAX_PENDING_EXPIRED = 10_000


class ControlPlaneDown(Unavailable):
    """The control plane did not answer, or answered 5xx: the same request may succeed later."""


@dataclass
class Registration:
    """What the control plane answered this edge's registration: its id, credential, issuer key, beat."""

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
        capacity: dict[str, Any] | None = None,
        http: httpx.Client | None = None,
        ca_pem: bytes | None = None,
        insecure: bool = False,
        credential_file: str | Path | None = None,
        register_wait_s: float | None = REGISTER_WAIT_S,
        session_ttl: float | None = None,
    ) -> None:
        """`capacity`: the memory fields of the capacity (`MemoryAccountant.capacity()`; None: none
        reported). `ca_pem` verifies the control plane's HTTPS (None: the system's trust store);
        plaintext http:// to another host is refused unless `insecure`. `register_wait_s`: how long
        `register` retries an unreachable control plane (None: for ever). `session_ttl`: the edge's
        idle-session TTL, reported with expired sessions (None: not reported)."""
        self.url = check_control_url(url, insecure=insecure)
        if not secret:
            raise InvalidArgument("--edge-secret is required with --control-plane")
        self.secret = secret
        self.body = {
            "name": name,
            "address": address,
            "models": models,
            "capacity": {"max_sessions": max_sessions, "memory_free_bytes": 0, **(capacity or {})},
        }
        self.max_sessions = max_sessions
        self.http = http or control_client(ca_pem, timeout=10)
        self.credential_file = Path(credential_file) if credential_file else None
        self.registration: Registration | None = None
        self._proposed: str | None = None  # the credential a registration in progress asks for
        self.reconnect = ReconnectPolicy(base_delay_s=0.5, max_delay_s=10.0, budget_s=register_wait_s)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.session_ttl = session_ttl
        self._expired: dict[str, None] = {}  # expired sessions to report, oldest first
        self._expired_lock = threading.Lock()

    def register(self) -> Registration:
        """Register with the stored credential if there is one (its name is ours), else the secret;
        an unreachable control plane is retried for `register_wait_s`."""
        return retry_while(
            self._register_once,
            lambda exc: isinstance(exc, ControlPlaneDown),
            self.reconnect,
            what=f"register with the control plane {self.url}",
        )

    def _register_once(self) -> Registration:
        """One registration, as this edge (its stored credential, then the one it proposed last time,
        in case that answer was lost) or else with the shared secret. It names its next credential,
        kept (0600) before it is sent: a control plane killed after its commit cannot lock it out."""
        proposed, tried_before = self._next_credential()
        body = {**self.body, "credential": proposed}
        own = [c for c in (self._stored_credential(), proposed if tried_before else None) if c]
        response = None
        for token in dict.fromkeys(own):
            response = self._send(REGISTER, body, token)
            if response.status_code != 401:
                break
            response = None
        if response is None:
            if own:
                logger.warning("the control plane does not know this edge's credentials; using the secret")
            response = self._send(REGISTER, body, self.secret)
        data = self._checked(response, REGISTER).json()
        self.registration = Registration(
            data["id"],
            data["credential"],
            data["token_issuer_public_key"].encode(),
            float(data["heartbeat_interval_seconds"]),
        )
        logger.info("registered with the control plane %s as edge %s", self.url, self.registration.edge_id)
        self._store_credential(self.registration.credential)
        self._forget_next_credential()
        return self.registration

    def _next_file(self) -> Path | None:
        if self.credential_file is None:
            return None
        return self.credential_file.with_name(self.credential_file.name + ".next")

    def _next_credential(self) -> tuple[str, bool]:
        """The credential this registration proposes, and whether an earlier try (of this process,
        or of one that died) sent it already."""
        path = self._next_file()
        if self._proposed is None and path is not None and path.is_file():
            self._proposed = path.read_text().strip() or None
        if self._proposed is not None:
            return self._proposed, True
        self._proposed = f"sfe_{secrets.token_urlsafe(32)}"
        if path is not None:
            write_private_file(path, self._proposed.encode() + b"\n", force=True)
        return self._proposed, False

    def _forget_next_credential(self) -> None:
        self._proposed = None
        path = self._next_file()
        if path is not None:
            path.unlink(missing_ok=True)

    def _stored_credential(self) -> str | None:
        if self.credential_file is None or not self.credential_file.is_file():
            return None
        return self.credential_file.read_text().strip() or None

    def _store_credential(self, credential: str) -> None:
        """Written 0600 to a temporary file then renamed, so a crash never leaves half a secret."""
        if self.credential_file is None:
            return
        self.credential_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.credential_file.parent, prefix=".edge-credential-")
        try:
            with os.fdopen(fd, "w") as out:
                out.write(credential + "\n")
            os.replace(tmp, self.credential_file)
        except BaseException:
            os.unlink(tmp)
            raise

    def note_expired(self, session_ids: list[str]) -> None:
        """Report `session_ids` (expired by the TTL) in the next heartbeats (`SessionManager.on_expired`)."""
        with self._expired_lock:
            self._expired.update(dict.fromkeys(session_ids))
            dropped = list(self._expired)[: max(0, len(self._expired) - MAX_PENDING_EXPIRED)]
            for session_id in dropped:
                del self._expired[session_id]
        if dropped:
            logger.warning("dropped %d expired sessions never reported to the control plane", len(dropped))

    def _expired_to_report(self) -> list[str]:
        with self._expired_lock:
            return list(self._expired)[:MAX_EXPIRED_PER_HEARTBEAT]

    def _reported(self, session_ids: list[str]) -> None:
        with self._expired_lock:
            for session_id in session_ids:
                self._expired.pop(session_id, None)

    def start(
        self,
        active_sessions: Callable[[], int],
        on_revoked: Callable[[list[str]], object] | None = None,
        capacity: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        """Start heartbeats in a thread; `on_revoked` gets each answer's sessions to close;
        `capacity()` gives the memory fields each beat reports."""
        self._thread = threading.Thread(
            target=self._loop, args=(active_sessions, on_revoked, capacity), name="heartbeat", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop the heartbeats, waiting up to 5 s for one in flight."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(
        self,
        active_sessions: Callable[[], int],
        on_revoked: Callable[[list[str]], object] | None,
        capacity: Callable[[], dict[str, Any]] | None,
    ) -> None:
        assert self.registration is not None
        interval = self.registration.heartbeat_interval
        # After a failure the next beat comes sooner, at a jittered moment (edges cut off together
        # do not come back together), never later than the interval: a restarted control plane
        # hears from every edge within one interval and marks none down.
        failed = Backoff(ReconnectPolicy(base_delay_s=interval / 4, max_delay_s=interval, budget_s=None))
        wait = interval
        while not self._stop.wait(wait):
            wait = interval
            try:
                self.heartbeat(active_sessions(), on_revoked, capacity() if capacity else None)
                failed.reset()
            except ControlPlaneDown as exc:
                wait = failed.next_delay() or interval
                logger.warning("heartbeat failed, next in %.1f s: %s", wait, exc)
            except Unavailable as exc:
                logger.warning("heartbeat failed: %s", exc)
            except Exception:  # the heartbeat must outlive a bad answer or a failing close
                logger.exception("heartbeat handling failed")

    def heartbeat(
        self,
        active: int,
        on_revoked: Callable[[list[str]], object] | None = None,
        capacity: dict[str, Any] | None = None,
    ) -> list[str]:
        """One heartbeat with the load and, when given, the memory fields of the capacity; hands the
        sessions to close to `on_revoked` and returns them."""
        assert self.registration is not None
        path = f"/v1/edges/{self.registration.edge_id}/heartbeat"
        body: dict[str, Any] = {"active_sessions": active}
        if capacity is not None:
            body["capacity"] = {"max_sessions": self.max_sessions, **capacity}
        expired = self._expired_to_report()
        if expired:
            body["expired_sessions"] = expired
            if self.session_ttl is not None:
                body["session_ttl_seconds"] = self.session_ttl
        try:
            answer = self._post(path, body, self.registration.credential).json()
        except ControlPlaneDown:
            raise  # kept for the next beat
        except Unavailable:
            self._reported(expired)  # refused (4xx): sent again, they would fail every beat
            raise
        self._reported(expired)  # answered: the control plane has them
        revoked = [sid for sid in answer.get("close_sessions", []) if isinstance(sid, str)]
        if on_revoked is not None:
            on_revoked(revoked)
        return revoked

    def _post(self, path: str, body: dict, token: str) -> httpx.Response:
        return self._checked(self._send(path, body, token), path)

    def _send(self, path: str, body: dict, token: str) -> httpx.Response:
        try:
            return self.http.post(self.url + path, json=body, headers={"Authorization": f"Bearer {token}"})
        except httpx.HTTPError as exc:
            # A certificate that does not verify will not verify later: no retry.
            cls = Unavailable if "CERTIFICATE_VERIFY_FAILED" in str(exc) else ControlPlaneDown
            raise cls(f"control plane {self.url} unreachable: {exc}") from None

    def _checked(self, response: httpx.Response, path: str) -> httpx.Response:
        if response.status_code >= 400:
            cls = ControlPlaneDown if response.status_code >= 500 else Unavailable
            raise cls(f"control plane answered {response.status_code} to {path}: {response.text[:200]}")
        return response
