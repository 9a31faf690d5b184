"""What every part of the store shares: the engine, the transaction, ids and secrets, and the job
state that sessions roll up into.

Store methods take keyword-only arguments and return plain ORM rows detached from their session
(with `expire_on_commit=False`), so routes never hold a database session across awaits.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event, select
from sqlalchemy.orm import Session, sessionmaker

from splitft_control.models import Device, Job, JobSession, utcnow

ACTIVE_SESSION_STATES = ("assigned", "running")
FINAL_JOB_STATES = ("succeeded", "failed", "cancelled")
_Row = TypeVar("_Row")


def hash_secret(secret: str) -> str:
    """Secrets are high-entropy random tokens, so a plain SHA-256 is a sound one-way store."""
    return hashlib.sha256(secret.encode()).hexdigest()


def new_id() -> str:
    """A fresh random row id (hex UUID4): ids never reveal order or count."""
    return uuid.uuid4().hex


def new_secret(prefix: str) -> str:
    """A fresh bearer secret; the prefix (sfk, sfe, sfd, sft) tells a leaked one's kind at a glance."""
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def aware(moment: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes; everything here is UTC."""
    if moment is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment


def get_row(s: Session, model: type[_Row], key: str) -> _Row | None:
    """`s.get`, for ids straight from a URL: one no row can have is absent (PostgreSQL text refuses NUL)."""
    if "\x00" in key:
        return None
    return s.get(model, key)


def make_engine(url: str, *, sqlite_synchronous: str = "FULL") -> Engine:
    """An engine for `url`; on SQLite with foreign keys enforced, WAL (readers never block writers)
    and synchronous=FULL by default: every commit, so every acknowledged write, is synced to the WAL
    on disk before the answer leaves, which survives a killed process and a power cut. NORMAL syncs
    at checkpoints only: a killed process still loses nothing, a power cut may lose the last commits
    (SPLITFT_SQLITE_SYNCHRONOUS; docs/resilience.md)."""
    if sqlite_synchronous.upper() not in ("FULL", "NORMAL"):
        raise ValueError(f"sqlite_synchronous must be FULL or NORMAL, not {sqlite_synchronous!r}")
    synchronous = sqlite_synchronous.upper()
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA synchronous={synchronous}")  # per connection, not the build's default
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


class StoreBase:
    """The engine and its transactions; the concern mixins of `Store` all build on it."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._placement_lock = threading.Lock()

    @contextmanager
    def tx(self) -> Iterator[Session]:
        """One database transaction: committed when the block ends, rolled back if it raises."""
        with self._sessions() as session, session.begin():
            yield session


def sessions_of(s: Session, job_id: str) -> list[tuple[JobSession, str]]:
    """The job's sessions with their device names, in device-name order."""
    rows = s.execute(
        select(JobSession, Device.name)
        .join(Device, JobSession.device_id == Device.id)
        .where(JobSession.job_id == job_id)
        .order_by(Device.name)
    )
    return [(row[0], row[1]) for row in rows]


def refresh_job(s: Session, job: Job) -> None:
    """Derive the job's state and reason from its sessions' (all succeeded, one failed, some running...);
    a federated job's from its rounds (`splitft_control.store.rounds`)."""
    if job.spec.get("mode") == "federated":
        from splitft_control.store.rounds import federated_state  # rounds build on this module

        new, reason = federated_state(s, job)
    else:
        new, reason = state_from_sessions([(sess.state, sess.reason) for sess, _ in sessions_of(s, job.id)])
    if (new, reason) != (job.state, job.reason):
        job.state, job.reason, job.updated_at = new, reason, utcnow()


def state_from_sessions(states: list[tuple[str, str]]) -> tuple[str, str]:
    """A job's (state, reason) from its sessions' (state, reason)."""
    names = [st for st, _ in states]
    if names and all(st == "succeeded" for st in names):
        new, reason = "succeeded", ""
    elif any(st == "failed" for st in names):
        new, reason = "failed", next(r for st, r in states if st == "failed")
    elif any(st in ACTIVE_SESSION_STATES or st == "succeeded" for st in names):
        new, reason = "running", next((r for st, r in states if st == "waiting"), "")
    else:
        new, reason = "pending", next((r for _, r in states if r), "waiting to be placed on an edge")
    return new, reason
