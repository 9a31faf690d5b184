"""Edges: registration, credentials, heartbeats, and what happens to an edge that goes silent."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import select

from splitft.errors import AlreadyExists, NotFound, PermissionDenied, Unauthenticated
from splitft_control.models import Edge, JobSession, SessionClosure, utcnow
from splitft_control.store.base import (
    ACTIVE_SESSION_STATES,
    StoreBase,
    aware,
    get_row,
    hash_secret,
    new_id,
    new_secret,
)


class EdgeStore(StoreBase):
    """Edges and their heartbeat credentials (only hashes are stored)."""

    def register_edge(
        self,
        *,
        name: str,
        address: str,
        models: list[str],
        memory_free_bytes: int,
        max_sessions: int,
        as_edge: str | None = None,
        memory_limit_bytes: int = 0,
        model_memory: dict[str, Any] | None = None,
        credential: str | None = None,
    ) -> tuple[Edge, str]:
        """Create the edge called `name`, or update it when the caller is that edge (`as_edge`, its
        id); returns it with its new heartbeat credential (`credential`, the one the edge chose, else
        a fresh one). The shared edge secret alone only creates: it must not let one edge take over
        another's name (and sessions)."""
        credential = credential or new_secret("sfe")
        with self.tx() as s:
            edge = s.scalar(select(Edge).where(Edge.name == name))
            if edge is None:
                if as_edge is not None:
                    raise PermissionDenied("an edge credential re-registers only its own edge name")
                edge = Edge(id=new_id(), name=name)
                s.add(edge)
            elif edge.status == "disabled":
                raise PermissionDenied(f"edge {name!r} is disabled by an operator")
            elif as_edge != edge.id:
                if as_edge is not None:
                    raise PermissionDenied("this credential belongs to another edge")
                raise AlreadyExists(
                    f"edge {name!r} is already registered; re-register with its own credential "
                    "(--edge-credential-file) or have an operator delete it first"
                )
            edge.address, edge.models = address, list(models)
            edge.memory_free_bytes, edge.max_sessions = memory_free_bytes, max_sessions
            edge.memory_limit_bytes, edge.model_memory = memory_limit_bytes, model_memory or {}
            edge.credential_hash, edge.status, edge.last_heartbeat_at = (
                hash_secret(credential),
                "up",
                utcnow(),
            )
        return edge, credential

    def edge_by_credential(self, *, credential: str) -> Edge | None:
        """The edge holding `credential`, if any (whatever its status)."""
        with self.tx() as s:
            return s.scalar(select(Edge).where(Edge.credential_hash == hash_secret(credential)))

    def authenticate_edge(self, *, credential: str, edge_id: str) -> Edge:
        """The edge `edge_id`, if `credential` is its own: Unauthenticated for an unknown credential,
        PermissionDenied for another edge's or a disabled edge."""
        with self.tx() as s:
            edge = s.scalar(select(Edge).where(Edge.credential_hash == hash_secret(credential)))
            if edge is None:
                raise Unauthenticated("unknown edge credential")
            if edge.id != edge_id:
                raise PermissionDenied("this credential belongs to another edge")
            if edge.status == "disabled":
                raise PermissionDenied(f"edge {edge.name!r} is disabled by an operator")
            return edge

    def heartbeat(
        self,
        *,
        edge_id: str,
        active_sessions: int,
        memory_free_bytes: int | None,
        max_sessions: int | None,
        memory_limit_bytes: int | None = None,
        model_memory: dict[str, Any] | None = None,
    ) -> Edge:
        """Record that the edge is alive, with its load and (when reported) its capacity; the memory
        limit and per-model memory come together (a capacity without them reports no memory)."""
        with self.tx() as s:
            edge = get_row(s, Edge, edge_id)
            if edge is None:
                raise NotFound(f"no edge {edge_id!r}")
            edge.last_heartbeat_at, edge.status, edge.active_sessions = utcnow(), "up", active_sessions
            if memory_free_bytes is not None:
                edge.memory_free_bytes = memory_free_bytes
            if max_sessions is not None:
                edge.max_sessions = max_sessions
            if memory_limit_bytes is not None:
                edge.memory_limit_bytes, edge.model_memory = memory_limit_bytes, model_memory or {}
            return edge

    def list_edges(self) -> list[Edge]:
        """Every edge, by name."""
        with self.tx() as s:
            return list(s.scalars(select(Edge).order_by(Edge.name)))

    def mark_stale_edges(self, *, timeout: timedelta) -> list[str]:
        """Mark edges silent for longer than `timeout` down and put their open sessions back in line."""
        cutoff = utcnow() - timeout
        with self.tx() as s:
            stale = [
                e
                for e in s.scalars(select(Edge).where(Edge.status == "up"))
                if (aware(e.last_heartbeat_at) or cutoff) < cutoff
            ]
            for edge in stale:
                edge.status = "down"
                for sess in s.scalars(
                    select(JobSession).where(
                        JobSession.edge_id == edge.id, JobSession.state.in_(ACTIVE_SESSION_STATES)
                    )
                ):
                    s.add(SessionClosure(edge_id=edge.id, session_id=sess.id))  # should it come back
                    sess.state, sess.edge_id = "waiting", None
                    sess.reason = f"edge {edge.name} missed heartbeats; waiting to be placed again"
                    sess.updated_at = utcnow()
            return [e.id for e in stale]
