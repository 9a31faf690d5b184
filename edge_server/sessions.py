"""Session bookkeeping on the edge: open, look up, close, and expire idle sessions."""

from __future__ import annotations

import logging
import re
import secrets
import threading
import time

from peft import LoraConfig

from edge_server.registry import ModelRegistry
from edge_server.session import TrunkSession
from splitft.compress import parse_codecs
from splitft.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)
from splitft.methods.wire import TrunkMethod
from splitft.spans import SplitSpec

logger = logging.getLogger(__name__)
_SESSION_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
MAX_REVOKED = 10_000  # the control plane sends at most this many (splitft_control.revocation)


class SessionManager:
    """Thread-safe map of live sessions, with a TTL for idle ones."""

    def __init__(
        self, registry: ModelRegistry, *, ttl_seconds: float = 600.0, max_sessions: int = 64
    ) -> None:
        self.registry = registry
        self.ttl_seconds = ttl_seconds
        self.max_sessions = max_sessions
        self._sessions: dict[str, TrunkSession] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._reaper: threading.Thread | None = None
        self._revoked: frozenset[str] = frozenset()

    def open(
        self,
        model: str,
        *,
        session_id: str | None = None,
        device_layers: int,
        head_layers: int,
        codec: str,
        lora_config: LoraConfig | None,
        seed: int,
        expect: tuple[str, int, int] | None = None,
        method: TrunkMethod | None = None,
    ) -> TrunkSession:
        if session_id is not None and session_id in self._revoked:
            raise PermissionDenied(f"session {session_id!r} was revoked by the control plane")
        served = self.registry.get(model)
        if expect is not None:
            _check_same_model(served.span.config, served.num_layers, expect)
        spec = SplitSpec(served.num_layers, device_layers, head_layers)
        codec = str(parse_codecs(codec))  # canonical: one label per codec pair in metrics and logs
        with self._lock:
            if len(self._sessions) >= self.max_sessions:
                raise ResourceExhausted(f"edge is full: {self.max_sessions} sessions open")
        session_id = _check_session_id(session_id) if session_id else secrets.token_hex(16)
        if method is not None and lora_config is not None:
            raise InvalidArgument("a session trains either a LoRA adapter or selected parameters, not both")
        session = TrunkSession(session_id, served.span, spec, codec, lora_config, seed, method=method)
        with self._lock:
            if session_id in self._sessions:
                raise AlreadyExists(f"session {session_id!r} is already open")
            self._sessions[session_id] = session
        logger.info(
            "opened session %s on %s: trunk blocks [%d, %d), %d trainable trunk parameters",
            session_id,
            model,
            spec.trunk_start,
            spec.trunk_stop,
            session.trainable_parameters,
        )
        return session

    def get(self, session_id: str) -> TrunkSession:
        with self._lock:
            session = self._sessions.get(session_id)
        if session is None:
            raise NotFound(f"unknown session {session_id!r} (never opened, closed, or expired)")
        session.touch()
        return session

    def close(self, session_id: str) -> None:
        with self._lock:
            session = self._sessions.pop(session_id, None)
        if session is None:
            raise NotFound(f"unknown session {session_id!r} (never opened, closed, or expired)")
        with session.lock:
            session.release()
        logger.info("closed session %s", session_id)

    def revoke(self, session_ids: list[str]) -> list[str]:
        """Make `session_ids` (the control plane's whole current list) the sessions this edge refuses
        to open, and close those that are open; returns the ids it closed."""
        self._revoked = frozenset(session_ids[:MAX_REVOKED])
        with self._lock:
            doomed = [sid for sid in self._sessions if sid in self._revoked]
        closed = []
        for session_id in doomed:
            try:
                self.close(session_id)
            except NotFound:  # closed or expired meanwhile
                continue
            closed.append(session_id)
            logger.info("closed session %s: revoked by the control plane", session_id)
        return closed

    def count(self) -> int:
        with self._lock:
            return len(self._sessions)

    def expire_idle(self) -> list[str]:
        """Drop sessions idle for longer than the TTL; returns their ids."""
        now = time.monotonic()
        with self._lock:
            expired = [sid for sid, s in self._sessions.items() if now - s.last_used > self.ttl_seconds]
            sessions = [self._sessions.pop(sid) for sid in expired]
        for session in sessions:
            with session.lock:
                session.release()
            logger.info("session %s expired after %.0f s idle", session.session_id, self.ttl_seconds)
        return expired

    def start_reaper(self, interval: float | None = None) -> None:
        period = interval if interval is not None else max(0.05, min(30.0, self.ttl_seconds / 4))
        self._reaper = threading.Thread(
            target=self._reap_loop, args=(period,), name="session-reaper", daemon=True
        )
        self._reaper.start()

    def stop(self) -> None:
        self._stop.set()
        if self._reaper is not None:
            self._reaper.join(timeout=5)
        with self._lock:
            sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            session.release()

    def _reap_loop(self, period: float) -> None:
        while not self._stop.wait(period):
            try:
                self.expire_idle()
            except Exception:  # the reaper must outlive any single bad session
                logger.exception("session reaper failed")


def _check_session_id(session_id: str) -> str:
    if not _SESSION_ID.fullmatch(session_id):
        raise InvalidArgument("session_id must be 1-128 characters of [A-Za-z0-9._:-]")
    return session_id


def _check_same_model(config, num_layers: int, expect: tuple[str, int, int]) -> None:
    model_type, layers, hidden = expect
    mine = (config.model_type, num_layers, config.hidden_size)
    theirs = (model_type or mine[0], layers or mine[1], hidden or mine[2])
    if mine != theirs:
        raise FailedPrecondition(
            f"device model (type, layers, hidden) {theirs} does not match the edge's {mine}"
        )
