"""How a secure federated round closes (`federated.secure_aggregation`): keys, fixed members, the sum.

1. **Keys.** Each session of the round, once trained, posts its X25519 public key, its update's
   layout, adapter config and example count (`SecAggStore.post_secagg_key`).
2. **Members fixed.** When no session of the round's attempt is still open without a key (the others
   posted one or failed), or at its deadline (sessions still without a key miss the round), the
   members are the sessions with a key; fewer than max(2, min_devices) fail the round. The round's
   deadline becomes at least UPLOAD_GRACE_S from then, so that members can mask and upload.
3. **Masked uploads.** Each member fetches the members' keys and uploads its masked vector. When every
   member's is in, their sum is decoded into the round's global adapter (FedAvg by example counts)
   and the masked vectors are dropped.
4. **Dropouts.** A member that fails, or misses the deadline, after the members were fixed leaves
   masks that nothing cancels: the round is REDONE without it (a new attempt: the others' uploads are
   discarded and their sessions marked failed with the reason; each gets a new session, new keys,
   new masks; the left-out device takes part again next round). SecAgg's recovery of a dropped
   member's masks from secret shares is not implemented.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from splitft.federated.secagg import MIN_MEMBERS
from splitft.jobs.spec import FederatedSpec
from splitft_control.aggregation import server_stepped
from splitft_control.models import (
    Job,
    JobSession,
    Metric,
    Round,
    SecAggMember,
    SecAggRound,
    SessionClosure,
    utcnow,
)
from splitft_control.secure_aggregation import global_adapter_from_masked
from splitft_control.store.base import ACTIVE_SESSION_STATES, aware, new_id, sessions_of
from splitft_control.store.rounds import open_round, round_references  # rounds reach this lazily: no cycle

UPLOAD_GRACE_S = 120.0  # at least this long to mask and upload once the members are fixed
OPEN_STATES = (*ACTIVE_SESSION_STATES, "waiting")


def secagg_round(s: Session, job_id: str, number: int) -> SecAggRound:
    """The round's secure-aggregation row (made on first use: attempt 0, members not fixed)."""
    query = select(SecAggRound).where(SecAggRound.job_id == job_id, SecAggRound.number == number)
    row = s.scalars(query).first()
    if row is None:
        row = SecAggRound(job_id=job_id, number=number, attempt=0, fixed_at=None, excluded=[])
        s.add(row)
        s.flush()
    return row


def members_of(s: Session, job_id: str, number: int, attempt: int) -> list[SecAggMember]:
    """The attempt's sessions that posted a key, in device-name order (the masks' order)."""
    query = select(SecAggMember).where(
        SecAggMember.job_id == job_id, SecAggMember.round == number, SecAggMember.attempt == attempt
    )
    return sorted(s.scalars(query), key=lambda m: m.device)


def needed(spec: FederatedSpec) -> int:
    """Members a secure round needs: min_devices, and never fewer than two (one sum is one update)."""
    return max(MIN_MEMBERS, spec.min_devices)


def advance_secure_round(s: Session, job: Job, current: Round, spec: FederatedSpec) -> None:
    """Move the secure round on as far as its sessions allow (called on every session event and by
    the scheduler at the deadline)."""
    state = secagg_round(s, job.id, current.number)
    rows = [(sess, name) for sess, name in sessions_of(s, job.id) if sess.round == current.number]
    members = members_of(s, job.id, current.number, state.attempt)
    past_deadline = utcnow() >= aware(current.deadline_at)  # type: ignore[operator]
    if state.fixed_at is None:
        keyed = {m.session_id for m in members}
        pending = [sess for sess, _ in rows if sess.state in OPEN_STATES and sess.id not in keyed]
        if pending and not past_deadline:
            return
        _fail(s, pending, f"missed the deadline of round {current.number} before offering its key")
        by_session = {sess.id: sess for sess, _ in rows}
        for member in [m for m in members if by_session[m.session_id].state not in OPEN_STATES]:
            s.delete(member)  # it failed before the members were fixed: no mask to cancel, not a member
        live = [m for m in members if by_session[m.session_id].state in OPEN_STATES]
        _fix_members(s, current, state, rows, live, spec)
        return
    by_session = {sess.id: sess for sess, _ in rows}
    if past_deadline:
        late = [by_session[m.session_id] for m in members if m.masked is None]
        _fail(s, late, f"missed the deadline of round {current.number} after its members were fixed")
    dropped = [m for m in members if m.masked is None and by_session[m.session_id].state not in OPEN_STATES]
    if dropped:
        _redo(s, job, current, state, members, dropped, spec, by_session)
    elif all(m.masked is not None for m in members):
        _sum(s, job, current, members, rows, spec)


def _fix_members(
    s: Session,
    current: Round,
    state: SecAggRound,
    rows: list[tuple[JobSession, str]],
    members: list[SecAggMember],
    spec: FederatedSpec,
) -> None:
    if len(members) < needed(spec):
        names = {m.device for m in members}
        _fail_round(
            s,
            current,
            rows,
            f"round {current.number}: {len(members)} devices offered keys for secure aggregation, "
            f"it needs {needed(spec)} (missed: {', '.join(sorted({n for _, n in rows} - names)) or 'none'})",
        )
        return
    state.fixed_at = utcnow()
    grace = state.fixed_at + timedelta(seconds=min(spec.round_timeout_s, UPLOAD_GRACE_S))
    current.deadline_at = max(aware(current.deadline_at), grace)  # type: ignore[type-var]


def _redo(
    s: Session,
    job: Job,
    current: Round,
    state: SecAggRound,
    members: list[SecAggMember],
    dropped: list[SecAggMember],
    spec: FederatedSpec,
    by_session: dict[str, JobSession],
) -> None:
    """Start the round again without the members that dropped out after the members were fixed."""
    out = sorted(m.device for m in dropped)
    survivors = [m for m in members if m not in dropped]
    reason = (
        f"round {current.number} redone without {', '.join(out)} (dropped out after the members of "
        "secure aggregation were fixed; their masks cannot cancel)"
    )
    for member in survivors:  # their masked uploads cannot be summed without the dropped masks
        member.masked = None
        sess = by_session[member.session_id]
        if sess.edge_id is not None and sess.state in ACTIVE_SESSION_STATES:
            s.add(SessionClosure(edge_id=sess.edge_id, session_id=sess.id))
        sess.state, sess.reason, sess.updated_at = "failed", reason, utcnow()
    state.excluded = sorted({*state.excluded, *out})
    if len(survivors) < needed(spec):
        _fail_round(s, current, list(_rows(s, job, current)), f"round {current.number}: {reason}")
        return
    state.attempt, state.fixed_at = state.attempt + 1, None
    current.deadline_at = utcnow() + timedelta(seconds=spec.round_timeout_s)
    for member in survivors:
        device_id = by_session[member.session_id].device_id
        s.add(JobSession(id=new_id(), job_id=job.id, device_id=device_id, round=current.number))


def _sum(
    s: Session,
    job: Job,
    current: Round,
    members: list[SecAggMember],
    rows: list[tuple[JobSession, str]],
    spec: FederatedSpec,
) -> None:
    """Every member's masked vector is in: decode their sum into the round's global adapter."""
    masked = [m.masked for m in members if m.masked is not None]
    total = global_adapter_from_masked(
        masked, [m.examples for m in members], members[0].layout, members[0].adapter_config
    )
    current.adapter = server_stepped(total, spec, *round_references(s, job, current.number, spec))
    for member in members:
        member.masked = None  # summed: nothing to keep
    current.participants = [m.device for m in members]
    current.missed = sorted({name for _, name in rows} - set(current.participants))
    current.bytes_up = sum(m.masked_bytes for m in members)
    losses = [x for x in (_last_loss(s, m.session_id) for m in members) if x is not None]
    current.mean_loss = sum(losses) / len(losses) if losses else None
    current.state, current.finished_at = "aggregated", utcnow()
    if current.number + 1 < spec.rounds:
        open_round(s, job, current.number + 1, sorted({sess.device_id for sess, _ in rows}), spec)


def _last_loss(s: Session, session_id: str) -> float | None:
    query = select(Metric.loss).where(Metric.session_id == session_id).order_by(Metric.step.desc()).limit(1)
    return s.scalars(query).first()


def _rows(s: Session, job: Job, current: Round) -> list[tuple[JobSession, str]]:
    return [(sess, name) for sess, name in sessions_of(s, job.id) if sess.round == current.number]


def _fail(s: Session, sessions: list[JobSession], reason: str) -> None:
    """End open sessions with `reason` (the edge is told to close those it holds)."""
    for sess in sessions:
        if sess.state not in OPEN_STATES:
            continue
        if sess.edge_id is not None and sess.state in ACTIVE_SESSION_STATES:
            s.add(SessionClosure(edge_id=sess.edge_id, session_id=sess.id))
        sess.state, sess.reason, sess.updated_at = "failed", reason, utcnow()


def _fail_round(s: Session, current: Round, rows: list[tuple[JobSession, str]], reason: str) -> None:
    """The round (and so the job) fails; its open sessions end with the reason."""
    _fail(s, [sess for sess, _ in rows], reason)
    current.state, current.reason, current.finished_at = "failed", reason, utcnow()
    current.missed = sorted({name for sess, name in rows if sess.state != "succeeded"})
