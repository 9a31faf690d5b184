"""Jobs: created by operators, placed on edges session by session, cancelled, and read back
(their metrics and the adapters their devices trained)."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from splitft.errors import FailedPrecondition, NotFound
from splitft.jobs.spec import JobCreate
from splitft.memory.estimate import MemoryProfile
from splitft_control.models import Device, Edge, Job, JobSession, Metric, SessionClosure, utcnow
from splitft_control.scheduler import EdgeLoad, no_edge_reason, place, session_need, shares_trunk
from splitft_control.store.base import (
    ACTIVE_SESSION_STATES,
    FINAL_JOB_STATES,
    StoreBase,
    get_row,
    new_id,
    refresh_job,
    sessions_of,
)
from splitft_control.store.plans import newest_plan, resolve_point, session_spec
from splitft_control.store.resume import choose_avoiding
from splitft_control.store.rounds import federated_spec, open_round
from splitft_control.store.shared_placement import shared_choice, waiting_rounds

JOB_STATES = ("pending", "running", "succeeded", "failed", "cancelled")


class JobStore(StoreBase):
    """Jobs, one session per device, and their placement on edges."""

    def create_job(self, *, name: str, spec: dict[str, Any], device_names: list[str]) -> Job:
        """A pending job with one waiting session per device; NotFound names the unknown devices."""
        with self.tx() as s:
            devices = {d.name: d for d in s.scalars(select(Device).where(Device.name.in_(device_names)))}
            missing = sorted(set(device_names) - set(devices))
            if missing:
                raise NotFound(f"unknown devices: {', '.join(missing)}")
            if spec.get("split") == "auto" and newest_plan(s, spec["model"]) is None:
                raise FailedPrecondition(
                    f'split "auto": no plan is registered for model {spec["model"]!r}: run '
                    "`splitft plan run` where the model is and POST its plan.json to /v1/plans"
                )
            job = Job(id=new_id(), name=name, spec=spec, reason="waiting to be placed on an edge")
            s.add(job)
            s.flush()
            federated = federated_spec(job)
            if federated is not None:
                _check_initial_adapter(s, federated.initial_adapter)
                open_round(s, job, 0, [devices[name].id for name in device_names], federated)
                return job
            for device_name in device_names:
                s.add(JobSession(id=new_id(), job_id=job.id, device_id=devices[device_name].id))
        return job

    def get_job(self, *, job_id: str) -> tuple[Job, list[tuple[JobSession, str]]]:
        """The job with its sessions and their device names; NotFound for an unknown id."""
        with self.tx() as s:
            job = get_row(s, Job, job_id)
            if job is None:
                raise NotFound(f"no job {job_id!r}")
            return job, sessions_of(s, job_id)

    def list_jobs(self, *, state: str | None = None, limit: int = 100, offset: int = 0) -> list[Job]:
        """One page of jobs, newest first, optionally only those in `state`."""
        with self.tx() as s:
            query = select(Job).order_by(Job.created_at.desc()).limit(limit).offset(offset)
            if state is not None:
                query = query.where(Job.state == state)
            return list(s.scalars(query))

    def cancel_job(self, *, job_id: str) -> Job:
        """Cancel the job and its unfinished sessions; the edges serving them are told to close them.

        NotFound for an unknown id, FailedPrecondition for a job that already ended."""
        with self.tx() as s:
            job = get_row(s, Job, job_id)
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

    def place_waiting(self) -> int:
        """Place waiting sessions on healthy edges with room (slots, and memory where the edge reports
        it: `splitft_control.scheduler`); record why the others wait.

        One pass at a time: in this process a lock, across control-plane replicas on PostgreSQL a row
        lock on the edges, so two passes never count the same free slot (or byte) twice."""
        placed = 0
        with self._placement_lock, self.tx() as s:
            edge_query = select(Edge).where(Edge.status == "up").order_by(Edge.id)
            if s.bind is not None and s.bind.dialect.name == "postgresql":
                edge_query = edge_query.with_for_update()
            specs: dict[str, JobCreate | None] = {}
            load = {e.id: _edge_load(s, e, specs) for e in s.scalars(edge_query)}
            waiting = s.execute(
                select(JobSession, Job)
                .join(Job, JobSession.job_id == Job.id)
                .where(JobSession.state == "waiting", Job.state.in_(("pending", "running")))
                .order_by(JobSession.created_at)
            ).all()
            rounds = waiting_rounds([(sess, job.id) for sess, job in waiting])
            for sess, job in waiting:
                spec, model = _spec(job, specs), job.spec["model"]
                if spec is not None and spec.split == "auto":  # its device's front point, once
                    spec, why = resolve_point(s, sess, spec)
                    if spec is None:
                        sess.reason = why
                        continue
                if spec is not None and spec.offsite is not None:  # no edge: the device trains alone
                    sess.state, sess.reason, sess.updated_at = "assigned", "", utcnow()
                    sess.attempts += 1
                    placed += 1
                    continue
                if shares_trunk(spec):  # the round's sessions on one edge, with its one trunk adapter
                    edge, reason, joins = shared_choice(
                        s, sess, spec, load, rounds[(job.id, sess.round)], model
                    )
                else:
                    edge, joins = choose_avoiding(s, sess, list(load.values()), model, spec), False
                    reason = no_edge_reason(model, list(load.values()), spec) if edge is None else ""
                if edge is None:
                    sess.reason = reason
                    continue
                sess.state, sess.edge_id, sess.reason, sess.updated_at = "assigned", edge.id, "", utcnow()
                s.execute(  # back on an edge it was taken from: that edge must not refuse it now
                    delete(SessionClosure).where(
                        SessionClosure.edge_id == edge.id, SessionClosure.session_id == sess.id
                    )
                )
                sess.attempts += 1
                place(edge, spec, joins=joins)
                placed += 1
            for job in s.scalars(select(Job).where(Job.state.in_(("pending", "running")))):
                refresh_job(s, job)
        return placed

    def job_counts(self) -> dict[str, int]:
        """How many jobs are in each state (every state present, zero included), for the metrics."""
        with self.tx() as s:
            rows = s.execute(select(Job.state, func.count()).group_by(Job.state))
            counts = {state: 0 for state in JOB_STATES}
            counts.update({state: int(n) for state, n in rows})
            return counts

    def job_metrics(
        self, *, job_id: str, limit: int = 1000, after: int = 0
    ) -> tuple[list[tuple[JobSession, str, list[Metric]]], int | None]:
        """One page of the job's points: the first `limit` stored after cursor `after` (pages follow
        storage order; within a page each session's points are in step order); and the cursor of
        the next page (None after the last)."""
        with self.tx() as s:
            if get_row(s, Job, job_id) is None:
                raise NotFound(f"no job {job_id!r}")
            sessions = sessions_of(s, job_id)
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
        """The adapter archive `device_name` trained in the job: NotFound for an unknown job or a
        device not in it, FailedPrecondition while its session has not succeeded."""
        with self.tx() as s:
            job = get_row(s, Job, job_id)
            if job is None:
                raise NotFound(f"no job {job_id!r}")
            if (job.spec.get("federated") or {}).get("secure_aggregation"):
                raise FailedPrecondition(
                    f"job {job_id} uses secure aggregation: the control plane never holds one device's "
                    f"adapter; the job's result is GET /v1/jobs/{job_id}/adapter"
                )
            rounds_last = sorted(sessions_of(s, job_id), key=lambda row: -(row[0].round or 0))
            for sess, device in rounds_last:  # a federated job's: the device's latest round
                if device == device_name:
                    if sess.adapter is None:
                        raise FailedPrecondition(
                            f"device {device_name!r} has not finished (session {sess.state})"
                        )
                    return sess.adapter
            raise NotFound(f"device {device_name!r} is not part of job {job_id!r}")


def _check_initial_adapter(s: Session, job_id: str | None) -> None:
    """A federated job may start from another's global adapter: a succeeded federated job."""
    if job_id is None:
        return
    source = get_row(s, Job, job_id)
    if source is None:
        raise NotFound(f"federated.initial_adapter: no job {job_id!r}")
    if federated_spec(source) is None or source.state != "succeeded":
        raise FailedPrecondition(
            f"federated.initial_adapter: job {job_id} is not a succeeded federated job ({source.state})"
        )


def _load(s: Session, edge_id: str) -> int:
    """How many open sessions the edge holds now."""
    query = (
        select(func.count())
        .select_from(JobSession)
        .where(JobSession.edge_id == edge_id, JobSession.state.in_(ACTIVE_SESSION_STATES))
    )
    return int(s.scalar(query) or 0)


def _spec(job: Job, cache: dict[str, JobCreate | None]) -> JobCreate | None:
    """The job's spec, parsed once per pass (None for one stored before its fields were checked)."""
    if job.id not in cache:
        try:
            cache[job.id] = JobCreate.model_validate(job.spec)
        except ValidationError:
            cache[job.id] = None
    return cache[job.id]


def _edge_load(s: Session, edge: Edge, specs: dict[str, JobCreate | None]) -> EdgeLoad:
    """The edge as placement sees it. Its free memory is the smaller of what it reported and its
    limit less the estimates of the sessions placed on it (those assigned since its last heartbeat
    are not in its report yet)."""
    load = EdgeLoad(edge.id, edge.name, list(edge.models), edge.max_sessions, _load(s, edge.id))
    if not edge.memory_limit_bytes:
        return load  # reports no memory: placed by slots
    for model, entry in (edge.model_memory or {}).items():
        if entry.get("profile") is not None:
            load.profiles[model] = MemoryProfile.model_validate(entry["profile"])
        load.default_bytes[model] = int(entry.get("session_bytes", 0))
    load.memory_free = edge.memory_limit_bytes
    placed = s.execute(
        select(Job, JobSession)
        .join(JobSession, JobSession.job_id == Job.id)
        .where(JobSession.edge_id == edge.id, JobSession.state.in_(ACTIVE_SESSION_STATES))
    )
    rounds: set[tuple[str, int | None]] = set()  # a shared trunk adapter is counted once per round
    for job, sess in placed:
        spec, number = session_spec(_spec(job, specs), sess), sess.round
        joins = shares_trunk(spec) and (job.id, number) in rounds
        rounds.add((job.id, number))
        load.memory_free -= session_need(load, spec, joins=joins) or 0
    load.memory_free = max(0, min(load.memory_free, edge.memory_free_bytes))
    return load
