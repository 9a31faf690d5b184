"""The control plane's store: every read and write of its state, over SQLAlchemy (SQLite or PostgreSQL).

Functions take keyword-only arguments and return plain ORM rows detached from their session (with
`expire_on_commit=False`), so routes never hold a database session across awaits.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, delete, event, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from splitft.errors import (
    AlreadyExists,
    FailedPrecondition,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)
from splitft_control.models import ApiKey, Device, Edge, Job, JobSession, Metric, SessionClosure, utcnow
from splitft_control.scheduler import EdgeLoad, choose_edge

ACTIVE_SESSION_STATES = ("assigned", "running")
FINAL_JOB_STATES = ("succeeded", "failed", "cancelled")
_Row = TypeVar("_Row")


def hash_secret(secret: str) -> str:
    """Secrets are high-entropy random tokens, so a plain SHA-256 is a sound one-way store."""
    return hashlib.sha256(secret.encode()).hexdigest()


def new_id() -> str:
    return uuid.uuid4().hex


def new_secret(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def _aware(moment: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes; everything here is UTC."""
    if moment is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment


def _get(s: Session, model: type[_Row], key: str) -> _Row | None:
    """`s.get`, for ids straight from a URL: one no row can have is absent (PostgreSQL text refuses NUL)."""
    if "\x00" in key:
        return None
    return s.get(model, key)


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


class Store:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._placement_lock = threading.Lock()

    @contextmanager
    def tx(self) -> Iterator[Session]:
        with self._sessions() as session, session.begin():
            yield session

    # --- operator API keys ---------------------------------------------------------------------

    def create_api_key(self, *, name: str, key: str | None = None) -> tuple[ApiKey, str]:
        key = key or new_secret("sfk")
        with self.tx() as s:
            if s.scalar(select(ApiKey).where(ApiKey.key_hash == hash_secret(key))) is not None:
                raise AlreadyExists("this API key already exists")
            row = ApiKey(id=new_id(), name=name, key_hash=hash_secret(key))
            s.add(row)
        return row, key

    def api_key_valid(self, *, key: str) -> bool:
        with self.tx() as s:
            row = s.scalar(select(ApiKey).where(ApiKey.key_hash == hash_secret(key)))
            return row is not None and row.revoked_at is None

    def list_api_keys(self) -> list[ApiKey]:
        with self.tx() as s:
            return list(s.scalars(select(ApiKey).order_by(ApiKey.created_at)))

    def revoke_api_key(self, *, key_id: str) -> None:
        with self.tx() as s:
            row = _get(s, ApiKey, key_id)
            if row is None:
                raise NotFound(f"no API key {key_id!r}")
            row.revoked_at = utcnow()

    def count_api_keys(self) -> int:
        with self.tx() as s:
            return int(s.scalar(select(func.count()).select_from(ApiKey)) or 0)

    # --- edges ---------------------------------------------------------------------------------

    def register_edge(
        self,
        *,
        name: str,
        address: str,
        models: list[str],
        memory_free_bytes: int,
        max_sessions: int,
        as_edge: str | None = None,
    ) -> tuple[Edge, str]:
        """Create the edge called `name`, or update it when the caller is that edge (`as_edge`, its
        id); returns it with a fresh heartbeat credential. The shared edge secret alone only creates:
        it must not let one edge take over another's name (and sessions)."""
        credential = new_secret("sfe")
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
            edge.credential_hash, edge.status, edge.last_heartbeat_at = (
                hash_secret(credential),
                "up",
                utcnow(),
            )
        return edge, credential

    def edge_by_credential(self, *, credential: str) -> Edge | None:
        with self.tx() as s:
            return s.scalar(select(Edge).where(Edge.credential_hash == hash_secret(credential)))

    def authenticate_edge(self, *, credential: str, edge_id: str) -> Edge:
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
        self, *, edge_id: str, active_sessions: int, memory_free_bytes: int | None, max_sessions: int | None
    ) -> Edge:
        with self.tx() as s:
            edge = _get(s, Edge, edge_id)
            if edge is None:
                raise NotFound(f"no edge {edge_id!r}")
            edge.last_heartbeat_at, edge.status, edge.active_sessions = utcnow(), "up", active_sessions
            if memory_free_bytes is not None:
                edge.memory_free_bytes = memory_free_bytes
            if max_sessions is not None:
                edge.max_sessions = max_sessions
            return edge

    def list_edges(self) -> list[Edge]:
        with self.tx() as s:
            return list(s.scalars(select(Edge).order_by(Edge.name)))

    def mark_stale_edges(self, *, timeout: timedelta) -> list[str]:
        """Mark edges silent for longer than `timeout` down and put their open sessions back in line."""
        cutoff = utcnow() - timeout
        with self.tx() as s:
            stale = [
                e
                for e in s.scalars(select(Edge).where(Edge.status == "up"))
                if (_aware(e.last_heartbeat_at) or cutoff) < cutoff
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

    # --- devices -------------------------------------------------------------------------------

    def create_device(self, *, name: str) -> tuple[Device, str]:
        token = new_secret("sft")
        with self.tx() as s:
            if s.scalar(select(Device).where(Device.name == name)) is not None:
                raise AlreadyExists(f"device {name!r} already exists")
            device = Device(id=new_id(), name=name, enrollment_hash=hash_secret(token))
            s.add(device)
        return device, token

    def enroll_device(
        self, *, enrollment_token: str, sign: Callable[[str], str | None]
    ) -> tuple[Device, str]:
        """Trade a one-time enrollment token for a device credential (and, via `sign`, a certificate).

        The token is consumed by one conditional UPDATE, the transaction's first statement, so two
        concurrent requests with the same token cannot both win: on PostgreSQL the second waits for
        the first's row lock and then matches no row; on SQLite it waits for the write lock."""
        credential = new_secret("sfd")
        with self.tx() as s:
            consumed = s.execute(
                update(Device)
                .where(Device.enrollment_hash == hash_secret(enrollment_token), Device.status == "pending")
                .values(
                    enrollment_hash=None,
                    credential_hash=hash_secret(credential),
                    status="enrolled",
                    enrolled_at=utcnow(),
                )
                .execution_options(synchronize_session=False)
            )
            if consumed.rowcount != 1:
                raise Unauthenticated("unknown or already used enrollment token")
            device = s.scalar(select(Device).where(Device.credential_hash == hash_secret(credential)))
            assert device is not None  # updated just above, in this transaction
            device.certificate_pem = sign(device.name)
        return device, credential

    def authenticate_device(self, *, credential: str) -> Device:
        with self.tx() as s:
            device = s.scalar(select(Device).where(Device.credential_hash == hash_secret(credential)))
            if device is None:
                raise Unauthenticated("unknown device credential")
            if device.status == "disabled":
                raise PermissionDenied(f"device {device.name!r} is disabled by an operator")
            return device

    def list_devices(self) -> list[Device]:
        with self.tx() as s:
            return list(s.scalars(select(Device).order_by(Device.name)))

    # --- jobs and sessions ---------------------------------------------------------------------

    def create_job(self, *, name: str, spec: dict[str, Any], device_names: list[str]) -> Job:
        with self.tx() as s:
            devices = {d.name: d for d in s.scalars(select(Device).where(Device.name.in_(device_names)))}
            missing = sorted(set(device_names) - set(devices))
            if missing:
                raise NotFound(f"unknown devices: {', '.join(missing)}")
            job = Job(id=new_id(), name=name, spec=spec, reason="waiting to be placed on an edge")
            s.add(job)
            s.flush()
            for device_name in device_names:
                s.add(JobSession(id=new_id(), job_id=job.id, device_id=devices[device_name].id))
        return job

    def get_job(self, *, job_id: str) -> tuple[Job, list[tuple[JobSession, str]]]:
        with self.tx() as s:
            job = _get(s, Job, job_id)
            if job is None:
                raise NotFound(f"no job {job_id!r}")
            return job, self._sessions_of(s, job_id)

    def list_jobs(self, *, state: str | None = None, limit: int = 100, offset: int = 0) -> list[Job]:
        with self.tx() as s:
            query = select(Job).order_by(Job.created_at.desc()).limit(limit).offset(offset)
            if state is not None:
                query = query.where(Job.state == state)
            return list(s.scalars(query))

    def cancel_job(self, *, job_id: str) -> Job:
        with self.tx() as s:
            job = _get(s, Job, job_id)
            if job is None:
                raise NotFound(f"no job {job_id!r}")
            if job.state in FINAL_JOB_STATES:
                raise FailedPrecondition(f"job is already {job.state}")
            for sess in s.scalars(select(JobSession).where(JobSession.job_id == job_id)):
                if sess.state in ACTIVE_SESSION_STATES and sess.edge_id is not None:
                    s.add(SessionClosure(edge_id=sess.edge_id, session_id=sess.id))
                if sess.state not in ("succeeded", "failed"):
                    sess.state, sess.reason, sess.updated_at = "cancelled", "job cancelled", utcnow()
            job.state, job.reason, job.updated_at = "cancelled", "cancelled by an operator", utcnow()
            return job

    def _sessions_of(self, s: Session, job_id: str) -> list[tuple[JobSession, str]]:
        rows = s.execute(
            select(JobSession, Device.name)
            .join(Device, JobSession.device_id == Device.id)
            .where(JobSession.job_id == job_id)
            .order_by(Device.name)
        )
        return [(row[0], row[1]) for row in rows]

    def place_waiting(self) -> int:
        """Place waiting sessions on healthy edges with room; record why the others wait.

        One pass at a time: in this process a lock, across control-plane replicas on PostgreSQL a row
        lock on the edges, so two passes never count the same free slot twice."""
        placed = 0
        with self._placement_lock, self.tx() as s:
            edge_query = select(Edge).where(Edge.status == "up").order_by(Edge.id)
            if s.bind is not None and s.bind.dialect.name == "postgresql":
                edge_query = edge_query.with_for_update()
            edges = list(s.scalars(edge_query))
            load = {
                e.id: EdgeLoad(e.id, e.name, list(e.models), e.max_sessions, self._load(s, e.id))
                for e in edges
            }
            waiting = s.execute(
                select(JobSession, Job)
                .join(Job, JobSession.job_id == Job.id)
                .where(JobSession.state == "waiting", Job.state.in_(("pending", "running")))
                .order_by(JobSession.created_at)
            )
            for sess, job in waiting:
                edge = choose_edge(list(load.values()), job.spec["model"])
                if edge is None:
                    sess.reason = _no_edge_reason(job.spec["model"], list(load.values()))
                    continue
                sess.state, sess.edge_id, sess.reason, sess.updated_at = "assigned", edge.id, "", utcnow()
                s.execute(  # back on an edge it was taken from: that edge must not refuse it now
                    delete(SessionClosure).where(
                        SessionClosure.edge_id == edge.id, SessionClosure.session_id == sess.id
                    )
                )
                sess.attempts += 1
                edge.active += 1
                placed += 1
            for job in s.scalars(select(Job).where(Job.state.in_(("pending", "running")))):
                self._refresh_job(s, job)
        return placed

    def job_counts(self) -> dict[str, int]:
        with self.tx() as s:
            rows = s.execute(select(Job.state, func.count()).group_by(Job.state))
            counts = {state: 0 for state in ("pending", "running", "succeeded", "failed", "cancelled")}
            counts.update({state: int(n) for state, n in rows})
            return counts

    def _load(self, s: Session, edge_id: str) -> int:
        query = (
            select(func.count())
            .select_from(JobSession)
            .where(JobSession.edge_id == edge_id, JobSession.state.in_(ACTIVE_SESSION_STATES))
        )
        return int(s.scalar(query) or 0)

    def _refresh_job(self, s: Session, job: Job) -> None:
        states = [(sess.state, sess.reason) for sess, _ in self._sessions_of(s, job.id)]
        names = [st for st, _ in states]
        if names and all(st == "succeeded" for st in names):
            new, reason = "succeeded", ""
        elif any(st == "failed" for st in names):
            new, reason = "failed", next(r for st, r in states if st == "failed")
        elif any(st in ACTIVE_SESSION_STATES or st == "succeeded" for st in names):
            new, reason = "running", next((r for st, r in states if st == "waiting"), "")
        else:
            new, reason = "pending", next((r for _, r in states if r), "waiting to be placed on an edge")
        if (new, reason) != (job.state, job.reason):
            job.state, job.reason, job.updated_at = new, reason, utcnow()

    def next_assignment(self, *, device_id: str) -> tuple[JobSession, Job, Edge] | None:
        """The device's oldest session placed on an edge; it becomes running."""
        with self.tx() as s:
            row = s.execute(
                select(JobSession, Job, Edge)
                .join(Job, JobSession.job_id == Job.id)
                .join(Edge, JobSession.edge_id == Edge.id)
                .where(
                    JobSession.device_id == device_id,
                    JobSession.state.in_(ACTIVE_SESSION_STATES),
                    Job.state.in_(("pending", "running")),
                    Edge.status == "up",
                )
                .order_by(JobSession.created_at)
                .limit(1)
            ).first()
            if row is None:
                return None
            sess, job, edge = row
            sess.state, sess.updated_at = "running", utcnow()
            self._refresh_job(s, job)
            return sess, job, edge

    def device_session(self, s: Session, *, session_id: str, device_id: str) -> JobSession:
        sess = _get(s, JobSession, session_id)
        if sess is None:
            raise NotFound(f"no session {session_id!r}")
        if sess.device_id != device_id:
            raise PermissionDenied("this session belongs to another device")
        return sess

    def check_open_session(self, *, session_id: str, device_id: str) -> None:
        """NotFound, PermissionDenied or FailedPrecondition unless the device's session is open."""
        with self.tx() as s:
            sess = self.device_session(s, session_id=session_id, device_id=device_id)
            if sess.state not in ACTIVE_SESSION_STATES:
                raise FailedPrecondition(f"session is {sess.state}, not running")

    def record_metrics(
        self, *, session_id: str, device_id: str, points: list[dict[str, Any]], max_points: int = 100_000
    ) -> None:
        """Store points for an open session, up to `max_points` per session in all."""
        with self.tx() as s:
            sess = self.device_session(s, session_id=session_id, device_id=device_id)
            if sess.state not in ACTIVE_SESSION_STATES:
                raise FailedPrecondition(
                    f"session is {sess.state}: metrics are accepted only while it is assigned or running"
                )
            query = select(func.count()).select_from(Metric).where(Metric.session_id == session_id)
            stored = int(s.scalar(query) or 0)
            if stored + len(points) > max_points:
                raise ResourceExhausted(
                    f"session has {stored} metric points; {len(points)} more would pass its limit of "
                    f"{max_points} (SPLITFT_MAX_METRIC_POINTS_PER_SESSION)"
                )
            s.add_all(Metric(session_id=session_id, **point) for point in points)

    def complete_session(self, *, session_id: str, device_id: str, adapter: bytes) -> None:
        with self.tx() as s:
            sess = self.device_session(s, session_id=session_id, device_id=device_id)
            if sess.state not in ACTIVE_SESSION_STATES:
                raise FailedPrecondition(f"session is {sess.state}, not running")
            sess.state, sess.adapter, sess.reason, sess.updated_at = "succeeded", adapter, "", utcnow()
            job = s.get(Job, sess.job_id)
            assert job is not None  # foreign key
            self._refresh_job(s, job)

    def fail_session(self, *, session_id: str, device_id: str, reason: str) -> None:
        with self.tx() as s:
            sess = self.device_session(s, session_id=session_id, device_id=device_id)
            if sess.state not in ACTIVE_SESSION_STATES:
                raise FailedPrecondition(f"session is {sess.state}, not running")
            sess.state, sess.reason, sess.updated_at = "failed", f"device reported: {reason}", utcnow()
            job = s.get(Job, sess.job_id)
            assert job is not None
            self._refresh_job(s, job)

    def job_metrics(
        self, *, job_id: str, limit: int = 1000, after: int = 0
    ) -> tuple[list[tuple[JobSession, str, list[Metric]]], int | None]:
        """One page of the job's points: the first `limit` stored after cursor `after` (pages follow
        storage order; within a page each session's points are in step order); and the cursor of
        the next page (None after the last)."""
        with self.tx() as s:
            if _get(s, Job, job_id) is None:
                raise NotFound(f"no job {job_id!r}")
            sessions = self._sessions_of(s, job_id)
            ids = [sess.id for sess, _ in sessions]
            page = list(
                s.scalars(
                    select(Metric)
                    .where(Metric.session_id.in_(ids), Metric.id > after)
                    .order_by(Metric.id)
                    .limit(limit)
                )
            )
            by_session: dict[str, list[Metric]] = {}
            for metric in page:
                by_session.setdefault(metric.session_id, []).append(metric)
            out = [
                (sess, device, sorted(by_session.get(sess.id, []), key=lambda m: (m.step, m.id)))
                for sess, device in sessions
            ]
            return out, (page[-1].id if len(page) == limit else None)

    def adapter(self, *, job_id: str, device_name: str) -> bytes:
        with self.tx() as s:
            if _get(s, Job, job_id) is None:
                raise NotFound(f"no job {job_id!r}")
            for sess, device in self._sessions_of(s, job_id):
                if device == device_name:
                    if sess.adapter is None:
                        raise FailedPrecondition(
                            f"device {device_name!r} has not finished (session {sess.state})"
                        )
                    return sess.adapter
            raise NotFound(f"device {device_name!r} is not part of job {job_id!r}")


def _no_edge_reason(model: str, edges: list[EdgeLoad]) -> str:
    serving = [e for e in edges if model in e.models]
    if not edges:
        return f"no healthy edge is registered (needed: one serving model {model!r})"
    if not serving:
        return f"no healthy edge serves model {model!r}"
    return f"all {len(serving)} healthy edges serving {model!r} are full"
