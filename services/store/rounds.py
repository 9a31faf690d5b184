"""Federated jobs: their rounds. Round r's sessions (one per device) start from round r-1's global
adapter; when every session of the round has finished, or its deadline has passed, the uploads of
those that succeeded are aggregated (weighted by their example counts) into round r's global
adapter, and round r+1 begins, or the job succeeds with it. A round with fewer uploads than
`min_devices` fails the job; a device that misses a round (it failed, or the deadline passed) is
recorded and takes part again in the next.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from splitft.errors import FailedPrecondition, NotFound
from splitft.federated.server import ServerOptimizer
from splitft.jobs.seeds import derive_seed, job_seed
from splitft.jobs.spec import FederatedSpec, JobCreate
from splitft_control.models import Job, JobSession, Metric, Round, SessionClosure, utcnow
from splitft_control.store.base import (
    ACTIVE_SESSION_STATES,
    StoreBase,
    aware,
    get_row,
    new_id,
    refresh_job,
    sessions_of,
    state_from_sessions,
)

# (uploads, example counts, spec, AirComp seed, the round's starting adapter, the previous round's) ->
# (the global adapter archive, AirComp's error)
Aggregate = Callable[
    [list[bytes], list[int], FederatedSpec, int, bytes | None, bytes | None], tuple[bytes, float | None]
]


def federated_spec(job: Job) -> FederatedSpec | None:
    """The job's federated spec, or None for an independent job."""
    if job.spec.get("mode") != "federated":
        return None
    return JobCreate.model_validate(job.spec).federated


def open_round(s: Session, job: Job, number: int, device_ids: list[str], spec: FederatedSpec) -> None:
    """Round `number` of `job`: its row, and one waiting session per device."""
    deadline = utcnow() + timedelta(seconds=spec.round_timeout_s)
    s.add(Round(job_id=job.id, number=number, deadline_at=deadline, participants=[], missed=[]))
    for device_id in device_ids:
        s.add(JobSession(id=new_id(), job_id=job.id, device_id=device_id, round=number))


def current_round(s: Session, job_id: str) -> Round | None:
    """The job's latest round."""
    query = select(Round).where(Round.job_id == job_id).order_by(Round.number.desc()).limit(1)
    return s.scalars(query).first()


def advance_round(s: Session, job: Job, aggregate: Aggregate) -> None:
    """Close the job's current round if it is over (every session finished, or its deadline passed)."""
    spec = federated_spec(job)
    current = current_round(s, job.id)
    if spec is None or current is None or current.state != "running":
        return
    if spec.secure_aggregation:  # keys, fixed members, the masked sum: store/secagg_rounds.py
        from splitft_control.store.secagg_rounds import advance_secure_round

        advance_secure_round(s, job, current, spec)
        return
    rows = [(sess, name) for sess, name in sessions_of(s, job.id) if sess.round == current.number]
    active = [sess for sess, _ in rows if sess.state in ACTIVE_SESSION_STATES or sess.state == "waiting"]
    if active and utcnow() < aware(current.deadline_at):  # type: ignore[operator]
        return
    for sess in active:  # past the deadline: the round goes on without them
        if sess.edge_id is not None and sess.state in ACTIVE_SESSION_STATES:
            s.add(SessionClosure(edge_id=sess.edge_id, session_id=sess.id))
        sess.state, sess.reason, sess.updated_at = (
            "failed",
            f"missed the deadline of round {current.number}",
            utcnow(),
        )
    done = [(sess, name) for sess, name in rows if sess.state == "succeeded" and sess.adapter is not None]
    current.missed = sorted(name for sess, name in rows if sess.state != "succeeded")
    current.finished_at = utcnow()
    if len(done) < spec.min_devices:
        current.state = "failed"
        current.reason = (
            f"round {current.number}: {len(done)} of the {spec.min_devices} uploads it needs arrived "
            f"by its deadline (missed: {', '.join(current.missed) or 'none'})"
        )
        return
    _aggregate_round(s, job, current, done, spec, aggregate)
    if current.state == "aggregated" and current.number + 1 < spec.rounds:
        open_round(s, job, current.number + 1, sorted({sess.device_id for sess, _ in rows}), spec)


def _aggregate_round(
    s: Session,
    job: Job,
    current: Round,
    done: list[tuple[JobSession, str]],
    spec: FederatedSpec,
    aggregate: Aggregate,
) -> None:
    archives = [sess.adapter for sess, _ in done if sess.adapter is not None]
    weights = [max(1, sess.examples or 1) for sess, _ in done]
    seed = aircomp_seed(job, current.number)
    start, before = round_references(s, job, current.number, spec)
    current.bytes_up = sum(len(a) for a in archives)
    losses = [_last_loss(s, sess.id) for sess, _ in done]
    known = [x for x in losses if x is not None]
    current.mean_loss = sum(known) / len(known) if known else None
    try:
        current.adapter, current.aggregation_error = aggregate(archives, weights, spec, seed, start, before)
    except FailedPrecondition as exc:  # AirComp: every device in deep fade, the round is lost
        _lose_round(current, start, exc.message)
        return
    current.participants = sorted(name for _, name in done)
    current.state = "aggregated"


def _lose_round(current: Round, start: bytes | None, why: str) -> None:
    """A round AirComp could not aggregate (no device above the truncation threshold): the global
    adapter stays the one it started from and the job goes on; a round 0 that started from a fresh
    adapter (never seen here) has none to keep, so the job fails with the reason."""
    current.participants, current.aggregation_error = [], None
    if start is None:
        current.state = "failed"
        current.reason = (
            f"round {current.number} lost to deep fade and it started from a fresh adapter the control "
            f"plane never sees, so there is no global adapter to keep: {why}"
        )
        return
    current.adapter, current.state = start, "aggregated"
    current.reason = f"round {current.number} lost to deep fade, the global adapter unchanged: {why}"


def aircomp_seed(job: Job, number: int) -> int:
    """AirComp's channel and noise draws of round `number`: from the job's seed (the spec's `seed`,
    else one derived from the job id, `splitft.jobs.seeds`), so a rerun of a seeded spec draws the
    same channels."""
    return derive_seed("aircomp", job_seed(job.spec.get("seed"), job.id), number)


def round_references(
    s: Session, job: Job, number: int, spec: FederatedSpec
) -> tuple[bytes | None, bytes | None]:
    """The global adapters round `number` and the round before it started from, read only where the
    round's aggregation uses them (two blobs a round otherwise): the start for AirComp (its
    reference, and the adapter a lost round keeps) and for a server step, the one before for the
    server step's momentum. None where not needed or where the control plane never saw it."""
    stepping = not ServerOptimizer(spec.server_lr, spec.server_momentum).is_plain_fedavg
    start = _starting_adapter(s, job, number, spec) if stepping or spec.aggregation == "aircomp" else None
    before = _starting_adapter(s, job, number - 1, spec) if stepping and number > 0 else None
    return start, before


def _starting_adapter(s: Session, job: Job, number: int, spec: FederatedSpec) -> bytes | None:
    """The global adapter round `number` started from: the previous round's, for round 0 the
    `initial_adapter` job's; None when round 0 started fresh (devices draw it; the control plane
    never sees it)."""
    if number > 0:
        return _round_adapter(s, job.id, number - 1)
    return _round_adapter(s, spec.initial_adapter, None) if spec.initial_adapter is not None else None


def _last_loss(s: Session, session_id: str) -> float | None:
    query = select(Metric.loss).where(Metric.session_id == session_id).order_by(Metric.step.desc()).limit(1)
    return s.scalars(query).first()


def federated_state(s: Session, job: Job) -> tuple[str, str]:
    """A federated job's (state, reason): failed with a failed round, succeeded after its last
    round's aggregation, else from the current round's sessions (a failed one only missed it)."""
    spec = federated_spec(job)
    current = current_round(s, job.id)
    if spec is None or current is None:
        return "pending", "waiting to be placed on an edge"
    if current.state == "failed":
        return "failed", current.reason
    if current.state == "aggregated" and current.number + 1 >= spec.rounds:
        return "succeeded", ""
    rows = [(sess.state, sess.reason) for sess, _ in sessions_of(s, job.id) if sess.round == current.number]
    state, reason = state_from_sessions([(st, r) for st, r in rows if st != "failed"] or rows)
    if state == "succeeded" or (state == "pending" and current.number > 0):  # between rounds
        state = "running"
    if state == "failed":
        return "running", f"round {current.number}: waiting for its deadline"
    return state, (reason or f"round {current.number + 1} of {spec.rounds}")


class RoundStore(StoreBase):
    """What operators and devices read of federated rounds; the scheduler closes rounds past due."""

    aggregate: Aggregate  # set by the `Store` (splitft_control.aggregation)

    def close_due_rounds(self) -> int:
        """Close every running round whose deadline has passed; how many were looked at."""
        with self.tx() as s:
            due = (
                s.execute(
                    select(Job)
                    .join(Round, Round.job_id == Job.id)
                    .where(
                        Round.state == "running",
                        Round.deadline_at <= utcnow(),
                        Job.state.in_(("pending", "running")),
                    )
                )
                .scalars()
                .all()
            )
            for job in due:
                advance_round(s, job, self.aggregate)
                refresh_job(s, job)
            return len(due)

    def rounds(self, *, job_id: str) -> list[Round]:
        """The job's rounds in order; NotFound for an unknown job."""
        with self.tx() as s:
            if get_row(s, Job, job_id) is None:
                raise NotFound(f"no job {job_id!r}")
            return list(s.scalars(select(Round).where(Round.job_id == job_id).order_by(Round.number)))

    def global_adapter(self, *, job_id: str) -> bytes:
        """A federated job's result: its last round's global adapter (FailedPrecondition until it
        succeeded; an independent job has an adapter per device instead)."""
        with self.tx() as s:
            job = get_row(s, Job, job_id)
            if job is None:
                raise NotFound(f"no job {job_id!r}")
            if federated_spec(job) is None:
                raise FailedPrecondition(
                    f"job {job_id} is independent: each device has its own adapter at "
                    f"/v1/jobs/{job_id}/adapters/{{device}}"
                )
            current = current_round(s, job_id)
            if job.state != "succeeded" or current is None or current.adapter is None:
                raise FailedPrecondition(
                    f"job {job_id} is {job.state}: its global adapter exists once it succeeded"
                )
            return current.adapter

    def initial_adapter(self, *, session_id: str, device_id: str) -> bytes:
        """What a federated session starts from: the previous round's global adapter, or for round 0
        the `initial_adapter` job's; NotFound when it starts fresh."""
        with self.tx() as s:
            sess = get_row(s, JobSession, session_id)
            if sess is None or sess.device_id != device_id:
                raise NotFound(f"no session {session_id!r} of this device")
            job = s.get(Job, sess.job_id)
            assert job is not None  # foreign key
            spec = federated_spec(job)
            if spec is None or sess.round is None:
                raise NotFound(f"session {session_id} is not part of a federated round")
            source_job, number = (job.id, sess.round - 1) if sess.round > 0 else (spec.initial_adapter, None)
            if source_job is None:
                raise NotFound(f"round 0 of job {job.id} starts from a fresh adapter")
            found = _round_adapter(s, source_job, number)
            current = s.scalars(
                select(Round).where(Round.job_id == job.id, Round.number == sess.round)
            ).first()
            if current is not None:
                current.bytes_down += len(found)
            return found


def _round_adapter(s: Session, job_id: str, number: int | None) -> bytes:
    """Round `number`'s global adapter of `job_id` (None: its last round's)."""
    query = select(Round).where(Round.job_id == job_id, Round.state == "aggregated")
    query = query.where(Round.number == number) if number is not None else query.order_by(Round.number.desc())
    found = s.scalars(query.limit(1)).first()
    if found is None or found.adapter is None:
        raise NotFound(
            f"job {job_id} has no global adapter" + (f" for round {number}" if number is not None else "")
        )
    return found.adapter
