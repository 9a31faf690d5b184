"""SQLAlchemy 2 models of the control plane's state. Alembic migrations mirror these."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Float, ForeignKey, Integer, LargeBinary, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    """Now, timezone-aware in UTC: every stored time is UTC."""
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    """The declarative base of every table (its metadata is what Alembic compares against)."""


class ApiKey(Base):
    """An operator API key; only its SHA-256 is stored."""

    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Edge(Base):
    """An edge server: where it listens, what it serves, its capacity and its last heartbeat."""

    __tablename__ = "edges"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    address: Mapped[str] = mapped_column(String(255))
    models: Mapped[list[str]] = mapped_column(JSON)
    memory_free_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    memory_limit_bytes: Mapped[int] = mapped_column(BigInteger, default=0)  # 0: reports no memory
    model_memory: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # EdgeCapacity.models
    max_sessions: Mapped[int] = mapped_column(Integer, default=16)
    active_sessions: Mapped[int] = mapped_column(Integer, default=0)
    credential_hash: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(16), default="up")
    registered_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    disabled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Device(Base):
    """A device: pending until it trades its enrollment token for a credential, then enrolled or disabled."""

    __tablename__ = "devices"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    enrollment_hash: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    credential_hash: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    certificate_pem: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    enrolled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    disabled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # splitft.plan.choice.DeviceClass as JSON (memory, link, speed): what `split: "auto"` plans for
    device_class: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class Plan(Base):
    """A model's plan (splitft.plan.choice.PlanFile, what `splitft plan run` measured), registered by an
    operator; an `auto` job's devices get the front point the model's newest plan recommends."""

    __tablename__ = "plans"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    model: Mapped[str] = mapped_column(String(128), index=True)
    body: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Job(Base):
    """An operator's fine-tuning job: one spec for its sessions (one per device), whose states roll up."""

    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class JobSession(Base):
    """One device's share of a job: the session it runs on an edge."""

    __tablename__ = "sessions"
    id: Mapped[str] = mapped_column(String(48), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), index=True)
    edge_id: Mapped[str | None] = mapped_column(ForeignKey("edges.id"), nullable=True, index=True)
    state: Mapped[str] = mapped_column(String(16), default="waiting", index=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    adapter: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    round: Mapped[int | None] = mapped_column(Integer, nullable=True)  # federated jobs: its round
    examples: Mapped[int | None] = mapped_column(Integer, nullable=True)  # what its upload weighs
    # split "auto": the front point chosen for its device's class (splitft.plan.choice.PlanPoint)
    plan_point: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Round(Base):
    """One round of a federated job: its deadline, who took part, and the global adapter it made."""

    __tablename__ = "rounds"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default="running")  # running, aggregated, failed
    reason: Mapped[str] = mapped_column(Text, default="")
    deadline_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    participants: Mapped[list[str]] = mapped_column(JSON, default=list)  # device names aggregated
    missed: Mapped[list[str]] = mapped_column(JSON, default=list)  # failed or past the deadline
    mean_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    bytes_up: Mapped[int] = mapped_column(BigInteger, default=0)  # adapters uploaded to the control plane
    bytes_down: Mapped[int] = mapped_column(BigInteger, default=0)  # initial adapters handed to devices
    aggregation_error: Mapped[float | None] = mapped_column(Float, nullable=True)  # AirComp vs FedAvg
    adapter: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)  # the global adapter .tar.gz
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Metric(Base):
    """One training point a device reported for its session (loss, throughput, bytes on the wire)."""

    __tablename__ = "metrics"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id"), index=True)
    step: Mapped[int] = mapped_column(Integer)
    loss: Mapped[float] = mapped_column(Float)
    examples_per_second: Mapped[float | None] = mapped_column(Float, nullable=True)
    bytes_sent: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    bytes_received: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class SessionClosure(Base):
    """A session an edge must close and refuse to open again (its job was cancelled, its device
    disabled, or it was placed elsewhere); handed to the edge in its heartbeat answers."""

    __tablename__ = "session_closures"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    edge_id: Mapped[str] = mapped_column(ForeignKey("edges.id"), index=True)
    session_id: Mapped[str] = mapped_column(String(48))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)


class SecAggRound(Base):
    """Secure aggregation's state of a federated round: which attempt runs (a member that drops out
    after the members are fixed makes the round start again without it), when its members were fixed,
    and the devices left out of it so far."""

    __tablename__ = "secagg_rounds"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    fixed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    excluded: Mapped[list[str]] = mapped_column(JSON, default=list)  # device names, by redos


class SecAggMember(Base):
    """A session's part in a secure round: its public key, its update's layout and adapter config and
    example count (all in the clear), and its masked vector until the round's sum is taken. Never a
    device's plain adapter."""

    __tablename__ = "secagg_members"
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id"), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    round: Mapped[int] = mapped_column(Integer)
    attempt: Mapped[int] = mapped_column(Integer)
    device: Mapped[str] = mapped_column(String(64))  # the device's name: the masks' order
    public_key: Mapped[bytes] = mapped_column(LargeBinary)
    layout: Mapped[list[Any]] = mapped_column(JSON)
    adapter_config: Mapped[dict[str, Any]] = mapped_column(JSON)
    examples: Mapped[int] = mapped_column(Integer)
    masked: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)  # dropped once summed
    masked_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
