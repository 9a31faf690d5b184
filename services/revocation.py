"""Revocation: operators disable or delete devices and edges, and edges learn which sessions to close.

A session an edge must close (its job cancelled, its device disabled, or it was placed on another
edge after this one went silent) is a `SessionClosure` row. Each heartbeat answer carries the
edge's whole current list, and the edge closes those sessions and refuses to open them again, so a
token for one stops working there.
Rows older than the longest token lifetime are dropped: no token for them can still be valid.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from splitft.errors import FailedPrecondition, NotFound
from splitft_control.models import Device, Edge, Job, JobSession, SessionClosure, utcnow
from splitft_control.store import ACTIVE_SESSION_STATES, Store, get_row, refresh_job

MAX_CLOSURES_PER_ANSWER = 10_000
CLOSURE_GRACE = timedelta(minutes=5)  # clock skew and a heartbeat or two beyond the token lifetime


def closures_for_edge(store: Store, *, edge_id: str, token_ttl: int) -> list[str]:
    """The sessions `edge_id` must close and refuse (newest first, bounded); prunes expired rows."""
    cutoff = utcnow() - timedelta(seconds=token_ttl) - CLOSURE_GRACE
    with store.tx() as s:
        s.execute(delete(SessionClosure).where(SessionClosure.created_at < cutoff))
        # A session taken from a silent edge waits to be placed again, maybe on that same edge once
        # it is back (its device may still be training there): it is listed only once placed elsewhere.
        rows = s.scalars(
            select(SessionClosure.session_id)
            .join(JobSession, JobSession.id == SessionClosure.session_id)
            .where(SessionClosure.edge_id == edge_id, JobSession.state != "waiting")
            .order_by(SessionClosure.id.desc())
            .limit(MAX_CLOSURES_PER_ANSWER)
        )
        return list(dict.fromkeys(rows))


def _device(s: Session, device_id: str) -> Device:
    """The device `device_id`; NotFound for an unknown id."""
    device = get_row(s, Device, device_id)
    if device is None:
        raise NotFound(f"no device {device_id!r}")
    return device


def _edge(s: Session, edge_id: str) -> Edge:
    """The edge `edge_id`; NotFound for an unknown id."""
    edge = get_row(s, Edge, edge_id)
    if edge is None:
        raise NotFound(f"no edge {edge_id!r}")
    return edge


def disable_device(store: Store, *, device_id: str) -> Device:
    """Its credential and enrollment token stop working, its open sessions fail and their edges are
    told to close them. Idempotent."""
    with store.tx() as s:
        device = _device(s, device_id)
        device.status, device.enrollment_hash = "disabled", None
        device.disabled_at = device.disabled_at or utcnow()
        jobs: set[str] = set()
        sessions = select(JobSession).where(
            JobSession.device_id == device.id, JobSession.state.in_((*ACTIVE_SESSION_STATES, "waiting"))
        )
        for sess in s.scalars(sessions):
            if sess.edge_id is not None and sess.state in ACTIVE_SESSION_STATES:
                s.add(SessionClosure(edge_id=sess.edge_id, session_id=sess.id))
            sess.state, sess.reason, sess.updated_at = "failed", "device disabled by an operator", utcnow()
            jobs.add(sess.job_id)
        for job_id in sorted(jobs):
            job = s.get(Job, job_id)
            if job is not None and job.state not in ("succeeded", "failed", "cancelled"):
                refresh_job(s, job)
        return device


def delete_device(store: Store, *, device_id: str) -> None:
    """Remove a device that no job names; one with sessions is kept for their history (disable it)."""
    with store.tx() as s:
        device = _device(s, device_id)
        query = select(func.count()).select_from(JobSession).where(JobSession.device_id == device.id)
        sessions = int(s.scalar(query) or 0)
        if sessions:
            raise FailedPrecondition(
                f"device {device.name!r} has {sessions} sessions in jobs, kept for their history; "
                "disable it instead (POST /v1/devices/{id}/disable)"
            )
        s.delete(device)


def disable_edge(store: Store, *, edge_id: str) -> Edge:
    """Its credential stops working, it cannot re-register, and its open sessions wait for another edge."""
    with store.tx() as s:
        edge = _edge(s, edge_id)
        edge.status, edge.disabled_at = "disabled", edge.disabled_at or utcnow()
        _requeue_sessions(s, edge, f"edge {edge.name} disabled by an operator; waiting to be placed again")
        return edge


def delete_edge(store: Store, *, edge_id: str) -> None:
    """Forget an edge (its name may register afresh); its open sessions wait for another edge."""
    with store.tx() as s:
        edge = _edge(s, edge_id)
        _requeue_sessions(s, edge, f"edge {edge.name} deleted by an operator; waiting to be placed again")
        s.execute(update(JobSession).where(JobSession.edge_id == edge.id).values(edge_id=None))
        s.execute(delete(SessionClosure).where(SessionClosure.edge_id == edge.id))
        s.delete(edge)


def _requeue_sessions(s: Session, edge: Edge, reason: str) -> None:
    """Put the edge's open sessions back in line for another edge, with `reason` shown on them."""
    for sess in s.scalars(
        select(JobSession).where(JobSession.edge_id == edge.id, JobSession.state.in_(ACTIVE_SESSION_STATES))
    ):
        sess.state, sess.edge_id, sess.reason, sess.updated_at = "waiting", None, reason, utcnow()
