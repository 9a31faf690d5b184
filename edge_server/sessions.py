"""Session bookkeeping on the edge: open, look up, close, and expire idle sessions.

Each live session is a `TrunkSession` (compute) with its `SessionWire` (codecs and encoders, the
transport's state) kept next to it: both are added and dropped together.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable

from peft import LoraConfig

from edge_server.admission import MemoryAccountant, adapter_of
from edge_server.batching import TrunkBatcher
from edge_server.limits import DataPlaneLimits
from edge_server.registry import ModelRegistry
from edge_server.session import SessionOwner, TrunkSession
from edge_server.session_wire import SessionWire
from edge_server.shared_adapters import SharedAdapters, check_shared_key
from edge_server.shared_view import SharedAdapterView
from splitft.compress import DirectionCodecs
from splitft.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)
from splitft.memory.estimate import SessionEstimate
from splitft.methods.wire import TrunkMethod
from splitft.model.quantize import check_selection_allowed
from splitft.model.spans import SplitSpec
from splitft.security.tokens import check_session_id

logger = logging.getLogger(__name__)
MAX_REVOKED = 10_000  # the control plane sends at most this many (splitft_control.revocation)


class SessionManager:
    """Thread-safe map of live sessions, with a TTL for idle ones."""

    def __init__(
        self,
        registry: ModelRegistry,
        *,
        ttl_seconds: float = 600.0,
        max_sessions: int = 64,
        limits: DataPlaneLimits | None = None,
        batcher: TrunkBatcher | None = None,
        memory: MemoryAccountant | None = None,
    ) -> None:
        self.registry = registry
        self.batcher = batcher  # None: every session runs its trunk passes alone (--batching off)
        self.memory = memory  # None: no memory admission (sessions are counted only)
        self.limits = limits or DataPlaneLimits()
        self.ttl_seconds = ttl_seconds
        self.max_sessions = max_sessions
        self._sessions: dict[str, TrunkSession] = {}
        self._opening: dict[str, SessionOwner] = {}  # slots reserved by opens still building
        self._wires: dict[str, SessionWire] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._reaper: threading.Thread | None = None
        self._revoked: frozenset[str] = frozenset()
        # Told the ids of the sessions the TTL expired (the control-plane link reports them: their
        # device went silent, `ControlPlaneLink.note_expired`); None: nobody is told.
        self.on_expired: Callable[[list[str]], object] | None = None
        self.shared = SharedAdapters(self.limits, memory)  # federated jobs' shared trunk adapters

    def open(
        self,
        model: str,
        *,
        session_id: str | None = None,
        device_layers: int,
        head_layers: int,
        codecs: DirectionCodecs,
        lora_config: LoraConfig | None,
        seed: int,
        expect: tuple[str, int, int] | None = None,
        method: TrunkMethod | None = None,
        owner: SessionOwner | None = None,
        batch_size: int = 0,
        sequence_length: int = 0,
        shared_adapter: str = "",
    ) -> TrunkSession:
        """Open a session on `model` (its trunk blocks between the device's layers); its slot
        (edge-wide and per device) and its estimated memory (at its expected batch shape, 0: the
        default) are reserved before it is built. `codecs` come parsed from OpenSession and stay
        with the session's wire state. `shared_adapter`: the key of the shared trunk adapter it
        joins (already authorised against its token; `edge_server.shared_adapters`)."""
        if session_id is not None and session_id in self._revoked:
            raise PermissionDenied(f"session {session_id!r} was revoked by the control plane")
        served = self.registry.get(model)
        if expect is not None:
            _check_same_model(served.span.config, served.num_layers, expect)
        spec = SplitSpec(served.num_layers, device_layers, head_layers)
        session_id = check_session_id(session_id) if session_id else secrets.token_hex(16)
        if method is not None and lora_config is not None:
            raise InvalidArgument("a session trains either a LoRA adapter or selected parameters, not both")
        owner = owner or SessionOwner()
        shape = (batch_size, sequence_length)
        self._reserve(
            session_id, owner, self._estimate(model, spec, lora_config, method, shape, shared_adapter)
        )
        session = self._build(session_id, model, spec, lora_config, seed, method, shared_adapter)
        session.owner = owner
        session.batcher = self.batcher
        wire = SessionWire.open(codecs, seed, self.limits.max_request_bytes)
        with self._lock:
            self._opening.pop(session_id, None)
            self._sessions[session_id] = session
            self._wires[session_id] = wire
        logger.info(
            "opened session %s on %s: trunk blocks [%d, %d), %d trainable trunk parameters",
            session_id,
            model,
            spec.trunk_start,
            spec.trunk_stop,
            session.trainable_parameters,
        )
        return session

    def _estimate(
        self,
        model: str,
        spec: SplitSpec,
        lora_config: LoraConfig | None,
        method: TrunkMethod | None,
        shape: tuple[int, int],
        shared_adapter: str,
    ) -> SessionEstimate | None:
        """A new session's estimated memory (None when none is counted); a session joining an
        existing shared trunk adapter counts its gradients, not the adapter again."""
        if shared_adapter and (lora_config is None or method is not None):
            raise InvalidArgument("a shared trunk adapter is LoRA: open it with trunk_lora and a LoRA config")
        joins = bool(shared_adapter) and self.shared.has(check_shared_key(shared_adapter))
        if self.memory is None:
            return None
        adapter, blocks = adapter_of(lora_config, method), spec.trunk_stop - spec.trunk_start
        return self.memory.estimate(model, blocks, adapter, *shape, joins_shared=joins)

    def _build(
        self,
        session_id: str,
        model: str,
        spec: SplitSpec,
        lora_config: LoraConfig | None,
        seed: int,
        method: TrunkMethod | None,
        shared_adapter: str = "",
    ) -> TrunkSession:
        """Build a reserved session and link it to the memory accountant, where the built adapter
        replaces its estimate (it must fit too); on failure its slot and memory are given back."""
        view: SharedAdapterView | None = None
        try:
            span = self.registry.get(model).span
            if method is not None:
                check_selection_allowed(span.quantization)
            if shared_adapter and lora_config is not None:
                view = self.shared.join(shared_adapter, model, span, spec, lora_config, seed)
            session = TrunkSession(
                session_id, span, spec, lora_config, seed, method=method, limits=self.limits, shared=view
            )
            if self.memory is not None:
                adapter, blocks = adapter_of(lora_config, method), spec.trunk_stop - spec.trunk_start
                session.memory = self.memory.link(session_id, model, blocks, adapter)
                session.memory.shared_entry = view.adapter.memory_entry if view is not None else None
                session.memory.settle(session.trainable)
        except BaseException:
            if view is not None:
                view.release()  # leaves the shared adapter (idle if this was its only session)
            with self._lock:
                self._opening.pop(session_id, None)
            if self.memory is not None:
                self.memory.forget(session_id)
            raise
        return session

    def _reserve(self, session_id: str, owner: SessionOwner, estimate: SessionEstimate | None) -> None:
        # Checked and reserved under one lock hold: concurrent opens cannot all pass the count, nor
        # all fit in the same free memory.
        with self._lock:
            if len(self._sessions) + len(self._opening) >= self.max_sessions:
                raise ResourceExhausted(f"edge is full: {self.max_sessions} sessions open")
            if session_id in self._sessions or session_id in self._opening:
                raise AlreadyExists(f"session {session_id!r} is already open")
            if owner.device:
                mine = sum(1 for s in self._sessions.values() if s.owner.device == owner.device)
                mine += sum(1 for o in self._opening.values() if o.device == owner.device)
                if mine >= self.limits.max_sessions_per_device:
                    raise ResourceExhausted(
                        f"device {owner.device!r} already has {mine} sessions on this edge; the limit is "
                        f"{self.limits.max_sessions_per_device} (--max-sessions-per-device)"
                    )
            if self.memory is not None and estimate is not None:
                self.memory.admit(session_id, estimate)
            self._opening[session_id] = owner

    def close_where(self, predicate: Callable[[TrunkSession], bool]) -> list[str]:
        """Close every open session for which `predicate(session)` is true; returns their ids.

        For whoever learns that sessions must end before their TTL (a cancelled job, a disabled
        device): e.g. `close_where(lambda s: s.owner.job == job_id)` or
        `close_where(lambda s: s.owner.device == name)`. Their next call gets NOT_FOUND.
        """
        with self._lock:
            chosen = [sid for sid, s in self._sessions.items() if predicate(s)]
            sessions = [s for s in map(self._pop, chosen) if s is not None]
        for session in sessions:
            with session.lock:
                session.release()
            logger.info("closed session %s: on request", session.session_id)
        return chosen

    def get(self, session_id: str) -> TrunkSession:
        """The live session `session_id` (NotFound otherwise), marked used now."""
        with self._lock:
            session = self._sessions.get(session_id)
        if session is None:
            raise NotFound(f"unknown session {session_id!r} (never opened, closed, or expired)")
        session.touch()
        return session

    def wire(self, session_id: str) -> SessionWire:
        """The wire state kept next to session `session_id` (NotFound once it is gone)."""
        with self._lock:
            wire = self._wires.get(session_id)
        if wire is None:
            raise NotFound(f"unknown session {session_id!r} (never opened, closed, or expired)")
        return wire

    def _pop(self, session_id: str) -> TrunkSession | None:
        """Drop a session and its wire state; the caller holds `self._lock`."""
        self._wires.pop(session_id, None)
        return self._sessions.pop(session_id, None)

    def close(self, session_id: str, why: str = "on the device's request") -> None:
        """Close session `session_id` and free its memory (NotFound if it is not open); `why` goes
        to the log, so an operator can tell a device's close from a revocation."""
        with self._lock:
            session = self._pop(session_id)
        if session is None:
            raise NotFound(f"unknown session {session_id!r} (never opened, closed, or expired)")
        with session.lock:
            session.release()
        logger.info("closed session %s: %s", session_id, why)

    def revoke(self, session_ids: list[str]) -> list[str]:
        """Make `session_ids` (the control plane's whole current list) the sessions this edge refuses
        to open, and close those that are open; returns the ids it closed."""
        self._revoked = frozenset(session_ids[:MAX_REVOKED])
        with self._lock:
            doomed = [sid for sid in self._sessions if sid in self._revoked]
        closed = []
        for session_id in doomed:
            try:
                self.close(session_id, why="revoked by the control plane")
            except NotFound:  # closed or expired meanwhile
                continue
            closed.append(session_id)
        return closed

    def count(self) -> int:
        """How many sessions are open."""
        with self._lock:
            return len(self._sessions)

    def expire_idle(self) -> list[str]:
        """Drop sessions idle for longer than the TTL; returns their ids."""
        now = time.monotonic()
        with self._lock:
            expired = [sid for sid, s in self._sessions.items() if now - s.last_used > self.ttl_seconds]
            sessions = [s for s in map(self._pop, expired) if s is not None]
        for session in sessions:
            with session.lock:
                session.release()
            logger.info("session %s expired after %.0f s idle", session.session_id, self.ttl_seconds)
        if expired and self.on_expired is not None:
            self.on_expired(expired)
        self.shared.expire_idle(self.ttl_seconds)  # shared trunk adapters no session held for the TTL
        return expired

    def start_reaper(self, interval: float | None = None) -> None:
        """Expire idle sessions every `interval` seconds (default: a quarter of the TTL) in a thread."""
        period = interval if interval is not None else max(0.05, min(30.0, self.ttl_seconds / 4))
        self._reaper = threading.Thread(
            target=self._reap_loop, args=(period,), name="session-reaper", daemon=True
        )
        self._reaper.start()

    def stop(self) -> None:
        """Stop the reaper and release every session."""
        self._stop.set()
        if self._reaper is not None:
            self._reaper.join(timeout=5)
        with self._lock:
            sessions, self._sessions, self._wires = list(self._sessions.values()), {}, {}
        for session in sessions:
            session.release()
        self.shared.close_all()

    def _reap_loop(self, period: float) -> None:
        while not self._stop.wait(period):
            try:
                self.expire_idle()
            except Exception:  # the reaper must outlive any single bad session
                logger.exception("session reaper failed")


def _check_same_model(config, num_layers: int, expect: tuple[str, int, int]) -> None:
    model_type, layers, hidden = expect
    mine = (config.model_type, num_layers, config.hidden_size)
    theirs = (model_type or mine[0], layers or mine[1], hidden or mine[2])
    if mine != theirs:
        raise FailedPrecondition(
            f"device model (type, layers, hidden) {theirs} does not match the edge's {mine}"
        )
