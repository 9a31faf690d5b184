"""An edge expired sessions (idle past its TTL: their device went silent): fail them, so a job waiting
on a device that vanished for good ends by its rules instead of waiting for an operator.

The edge names them in its heartbeat (`expired_sessions`). Only sessions placed on that edge and
still open (assigned or running) are failed, and only when their device has not reported since the
edge's previous heartbeat (the expiry happened after it began): a device that is still there finds
its session gone on its next edge call and reports the edge lost (`ResumeStore.edge_lost`). Any
other id (unknown, another edge's, already ended or moved) is ignored and logged: one edge's word
never ends another edge's session.
"""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from splitft_control.models import Edge, JobSession, Metric, utcnow
from splitft_control.store.base import ACTIVE_SESSION_STATES, aware, get_row
from splitft_control.store.sessions import DeviceSessionStore

logger = logging.getLogger(__name__)


def silent_reason(ttl_seconds: float | None) -> str:
    """The failed session's reason."""
    after = f" after {ttl_seconds:g} s" if ttl_seconds is not None else ""
    return f"its device went silent: the edge expired the session{after} without a call from it"


class ExpiryStore(DeviceSessionStore):
    """Sessions an edge reports expired."""

    def sessions_expired(
        self, *, edge_id: str, session_ids: list[str], ttl_seconds: float | None, since: datetime | None
    ) -> list[str]:
        """Fail the sessions of `session_ids` that are open on edge `edge_id` and whose device has not
        reported after `since` (the edge's previous heartbeat; None: not checked); returns their ids."""
        failed, ignored = [], []
        with self.tx() as s:
            for session_id in session_ids:
                sess = get_row(s, JobSession, session_id)
                if sess is None or sess.edge_id != edge_id or sess.state not in ACTIVE_SESSION_STATES:
                    ignored.append(session_id)
                    continue
                if since is not None and _last_report(s, sess) > aware(since):
                    logger.info("session %s expired on its edge, but its device reported since", sess.id)
                    continue
                sess.state, sess.reason, sess.updated_at = "failed", silent_reason(ttl_seconds), utcnow()
                self._session_ended(s, sess)
                failed.append(session_id)
            edge = s.get(Edge, edge_id)
        name = edge.name if edge is not None else edge_id
        if ignored:
            logger.warning(
                "edge %s reported %d expired sessions that are not open on it (ignored): %s",
                name,
                len(ignored),
                ", ".join(ignored[:10]),
            )
        for session_id in failed:
            logger.info("session %s failed: edge %s expired it (its device went silent)", session_id, name)
        return failed


def _last_report(s: Session, sess: JobSession) -> datetime:
    """When the control plane last heard from the session's device about it: its last state change
    (taking the assignment) or its last metric point."""
    query = select(func.max(Metric.created_at)).where(Metric.session_id == sess.id)
    metric = aware(s.scalar(query))
    updated = aware(sess.updated_at)
    assert updated is not None
    return max(updated, metric) if metric is not None else updated
