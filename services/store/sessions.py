"""The device side of a session: taking an assignment, reporting metrics, finishing or failing."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from splitft.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, ResourceExhausted
from splitft_control.models import Edge, Job, JobSession, Metric, utcnow
from splitft_control.store.base import ACTIVE_SESSION_STATES, StoreBase, get_row, refresh_job
from splitft_control.store.idempotence import is_repeated_upload, new_points
from splitft_control.store.rounds import Aggregate, advance_round


class DeviceSessionStore(StoreBase):
    """What an enrolled device does with its own sessions; every call checks the session is its."""

    aggregate: Aggregate  # how a federated round's uploads become its global adapter (set by `Store`)

    def next_assignment(self, *, device_id: str) -> tuple[JobSession, Job, Edge | None] | None:
        """The device's oldest session placed on an edge (or, for an offsite job, on none: the device
        trains against its emulator); it becomes running."""
        with self.tx() as s:
            row = s.execute(
                select(JobSession, Job, Edge)
                .join(Job, JobSession.job_id == Job.id)
                .outerjoin(Edge, JobSession.edge_id == Edge.id)
                .where(
                    JobSession.device_id == device_id,
                    JobSession.state.in_(ACTIVE_SESSION_STATES),
                    Job.state.in_(("pending", "running")),
                    or_(Edge.status == "up", JobSession.edge_id.is_(None)),
                )
                .order_by(JobSession.created_at)
                .limit(1)
            ).first()
            if row is None:
                return None
            sess, job, edge = row
            sess.state, sess.updated_at = "running", utcnow()
            refresh_job(s, job)
            return sess, job, edge

    def device_session(self, s: Session, *, session_id: str, device_id: str) -> JobSession:
        """The session, in transaction `s`: NotFound if unknown, PermissionDenied if another device's."""
        sess = get_row(s, JobSession, session_id)
        if sess is None:
            raise NotFound(f"no session {session_id!r}")
        if sess.device_id != device_id:
            raise PermissionDenied("this session belongs to another device")
        return sess

    def check_open_session(
        self, *, session_id: str, device_id: str, plain_upload: bool = False, allow_succeeded: bool = False
    ) -> bool:
        """NotFound, PermissionDenied or FailedPrecondition unless the device's session is open (and,
        with `plain_upload`, its job takes plain adapters: not one with secure aggregation). With
        `allow_succeeded` a succeeded session passes too (a retried upload, whose answer was lost,
        may repeat what it stored); True when it succeeded."""
        with self.tx() as s:
            sess = self.device_session(s, session_id=session_id, device_id=device_id)
            allowed = (*ACTIVE_SESSION_STATES, "succeeded") if allow_succeeded else ACTIVE_SESSION_STATES
            if sess.state not in allowed:
                raise FailedPrecondition(f"session is {sess.state}, not running{ended_because(sess)}")
            if plain_upload:
                _refuse_plain_upload_of_secure_job(s, sess)
            return sess.state == "succeeded"

    def record_metrics(
        self, *, session_id: str, device_id: str, points: list[dict[str, Any]], max_points: int = 100_000
    ) -> None:
        """Store points for an open session, up to `max_points` per session in all."""
        with self.tx() as s:
            sess = self.device_session(s, session_id=session_id, device_id=device_id)
            if sess.state not in ACTIVE_SESSION_STATES:
                raise FailedPrecondition(
                    f"session is {sess.state}: metrics are accepted only while it is assigned or running"
                    + ended_because(sess)
                )
            points = new_points(s, session_id, points)  # a resent report (its answer was lost) adds nothing
            query = select(func.count()).select_from(Metric).where(Metric.session_id == session_id)
            stored = int(s.scalar(query) or 0)
            if stored + len(points) > max_points:
                raise ResourceExhausted(
                    f"session has {stored} metric points; {len(points)} more would pass its limit of "
                    f"{max_points} (SPLITFT_MAX_METRIC_POINTS_PER_SESSION)"
                )
            s.add_all(Metric(session_id=session_id, **point) for point in points)

    def complete_session(
        self, *, session_id: str, device_id: str, adapter: bytes, examples: int | None = None
    ) -> None:
        """Mark the device's open session succeeded and keep its trained adapter archive (and, in a
        federated round, the example count its upload weighs; the round closes once all are in)."""
        with self.tx() as s:
            sess = self.device_session(s, session_id=session_id, device_id=device_id)
            if is_repeated_upload(sess, adapter, examples):
                return  # the same upload again (its answer was lost): already stored, nothing changes
            if sess.state not in ACTIVE_SESSION_STATES:
                raise FailedPrecondition(f"session is {sess.state}, not running{ended_because(sess)}")
            _refuse_plain_upload_of_secure_job(s, sess)
            if sess.round is not None and (examples is None or examples < 1):
                raise InvalidArgument(
                    "a federated round's upload needs examples=N (N >= 1, its local examples)"
                )
            sess.state, sess.adapter, sess.reason, sess.updated_at = "succeeded", adapter, "", utcnow()
            sess.examples = examples if sess.round is not None else None
            self._session_ended(s, sess)

    def _session_ended(self, s: Session, sess: JobSession) -> None:
        job = s.get(Job, sess.job_id)
        assert job is not None  # foreign key
        if sess.round is not None:
            advance_round(s, job, self.aggregate)
        refresh_job(s, job)

    def fail_session(self, *, session_id: str, device_id: str, reason: str) -> None:
        """Mark the device's open session failed with the reason it reported (the job fails with it)."""
        with self.tx() as s:
            sess = self.device_session(s, session_id=session_id, device_id=device_id)
            if sess.state == "failed" and sess.reason == f"device reported: {reason}":
                return  # the same report again (its answer was lost)
            if sess.state not in ACTIVE_SESSION_STATES:
                raise FailedPrecondition(f"session is {sess.state}, not running{ended_because(sess)}")
            sess.state, sess.reason, sess.updated_at = "failed", f"device reported: {reason}", utcnow()
            self._session_ended(s, sess)


def ended_because(sess: JobSession) -> str:
    """Why a session that is no longer open ended, for the 409 its device gets (e.g. its edge expired
    it while the device was silent); empty when no reason was kept."""
    return f" ({sess.reason})" if sess.reason else ""


def _refuse_plain_upload_of_secure_job(s: Session, sess: JobSession) -> None:
    """A job with secure aggregation never takes one device's adapter in the clear."""
    job = s.get(Job, sess.job_id)
    federated = job.spec.get("federated") if job is not None else None
    if isinstance(federated, dict) and federated.get("secure_aggregation"):
        raise FailedPrecondition(
            f"job {sess.job_id} uses secure aggregation: the control plane takes no plain adapter; "
            f"POST the masked update to /v1/sessions/{sess.id}/secagg/masked"
        )
