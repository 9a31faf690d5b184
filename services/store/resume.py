"""A device lost its session's edge: put the session back in line for another edge, within a bound.

The device agent reports it (`splitft.jobs.resume`); the session goes back to `waiting`, the edge it
left gets a `SessionClosure` (should that edge still hold the session, it closes it once the session
runs elsewhere; `splitft_control.revocation`), and placement prefers an edge the session was not
taken from (`choose_avoiding`). A session is placed at most `1 + max_resumes` times (its `attempts`,
whatever moved it: a device's report or missed heartbeats); a report past that fails it, and its job
follows its rules (an independent job fails, a federated round counts the device as missed).

One device's word never marks an edge down (a device cannot take edges out of service): the edge
stays `up` until its own heartbeats stop.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from splitft.errors import FailedPrecondition
from splitft.jobs.resume import EdgeLostAnswer
from splitft.jobs.spec import JobCreate
from splitft_control.models import Edge, JobSession, SessionClosure, utcnow
from splitft_control.scheduler import EdgeLoad, choose_edge
from splitft_control.store.base import ACTIVE_SESSION_STATES
from splitft_control.store.sessions import DeviceSessionStore, ended_because


class ResumeStore(DeviceSessionStore):
    """The device side of resuming a session on another edge."""

    def edge_lost(
        self, *, session_id: str, device_id: str, edge_address: str, reason: str, max_resumes: int
    ) -> EdgeLostAnswer:
        """Re-place the device's session whose edge it lost, or fail it past `max_resumes`.

        A session no longer on the reported edge (missed heartbeats already moved it) is left as it
        is: the answer says where it is. FailedPrecondition for a session that has ended."""
        with self.tx() as s:
            sess = self.device_session(s, session_id=session_id, device_id=device_id)
            if sess.state not in (*ACTIVE_SESSION_STATES, "waiting"):
                raise FailedPrecondition(
                    f"session is {sess.state}: it has ended and cannot be resumed{ended_because(sess)}"
                )
            edge = s.get(Edge, sess.edge_id) if sess.edge_id is not None else None
            if sess.state == "waiting" or edge is None or edge.address != edge_address:
                return _answer(sess, max_resumes)  # already back in line, or moved: nothing to do
            if sess.attempts > max_resumes:
                sess.state, sess.updated_at = "failed", utcnow()
                sess.reason = (
                    f"device reported edge {edge.name} lost after {sess.attempts} placements "
                    f"(SPLITFT_MAX_SESSION_RESUMES={max_resumes}): {reason}"
                )
                self._session_ended(s, sess)
                return _answer(sess, max_resumes)
            s.add(SessionClosure(edge_id=edge.id, session_id=sess.id))
            sess.state, sess.edge_id, sess.updated_at = "waiting", None, utcnow()
            sess.reason = (
                f"device reported edge {edge.name} lost ({reason}); waiting to be placed again "
                f"(resume {sess.attempts} of at most {max_resumes})"
            )
            self._session_ended(s, sess)  # the job's state and reason follow (it does not end)
            return _answer(sess, max_resumes)

    def resume_answer(self, *, session_id: str, max_resumes: int) -> EdgeLostAnswer:
        """Where the session is now (after a placement pass)."""
        with self.tx() as s:
            sess = s.get(JobSession, session_id)
            assert sess is not None  # sessions are never deleted
            return _answer(sess, max_resumes)


def _answer(sess: JobSession, max_resumes: int) -> EdgeLostAnswer:
    state = sess.state if sess.state in ("waiting", "assigned", "running", "failed") else "failed"
    return EdgeLostAnswer(state=state, placements=sess.attempts, max_resumes=max_resumes, reason=sess.reason)


def choose_avoiding(
    s: Session, sess: JobSession, edges: list[EdgeLoad], model: str, spec: JobCreate | None
) -> EdgeLoad | None:
    """`choose_edge`, preferring edges the session was not taken from (a session placed before:
    its edge died, missed heartbeats, or its device lost it); one of those only if no other fits,
    e.g. the same edge back after a restart."""
    if sess.attempts:
        left = set(s.scalars(select(SessionClosure.edge_id).where(SessionClosure.session_id == sess.id)))
        others = [e for e in edges if e.id not in left]
        if left and len(others) < len(edges):
            edge = choose_edge(others, model, spec)
            if edge is not None:
                return edge
    return choose_edge(edges, model, spec)
