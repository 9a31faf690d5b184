"""Placement of a shared-trunk federated round (`trunk_adapter: "shared"`): all its sessions on the
edge that holds its one trunk adapter (`splitft_control.scheduler`, "shared trunk")."""

from __future__ import annotations

from collections import Counter

from sqlalchemy import select
from sqlalchemy.orm import Session

from splitft.jobs.spec import JobCreate
from splitft_control.models import JobSession
from splitft_control.scheduler import EdgeLoad, choose_edge_for_all, no_edge_for_all_reason, session_need
from splitft_control.store.base import ACTIVE_SESSION_STATES


def waiting_rounds(rows: list[tuple[JobSession, str]]) -> Counter[tuple[str, int | None]]:
    """How many sessions of each (job id, round) wait, from (session, job id) rows."""
    return Counter((job_id, sess.round) for sess, job_id in rows)


def shared_choice(
    s: Session,
    sess: JobSession,
    spec: JobCreate | None,
    load: dict[str, EdgeLoad],
    waiting: int,
    model: str,
) -> tuple[EdgeLoad | None, str, bool]:
    """(the edge for `sess`, or None; the reason it waits; whether it joins an adapter that a session
    of its round holds there already). A session follows the round's sessions placed before it (running
    or finished; those placed earlier in this pass too: the query flushes them) to their edge while it
    is healthy, and waits while that edge is full. Otherwise it opens the round on an edge that takes
    all `waiting` sessions of it (the adapter counted once), or waits with the reason. (A round whose
    edge went down starts again on another: the sessions it had put back in line are placed anew.)"""
    held = s.scalars(
        select(JobSession.edge_id).where(
            JobSession.job_id == sess.job_id,
            JobSession.round == sess.round,
            JobSession.state.in_((*ACTIVE_SESSION_STATES, "succeeded")),
            JobSession.edge_id.is_not(None),
            JobSession.id != sess.id,
        )
    ).all()
    edge = next((load[edge_id] for edge_id in held if edge_id in load), None)
    if edge is None:
        edge = choose_edge_for_all(list(load.values()), model, spec, waiting)
        if edge is None:
            return None, no_edge_for_all_reason(model, list(load.values()), spec, waiting), False
        return edge, "", False
    need = session_need(edge, spec, joins=True)
    if edge.room < 1 or (edge.memory_free is not None and need is not None and need > edge.memory_free):
        return (
            None,
            f"waiting for room on edge {edge.name}, which holds this round's shared trunk adapter",
            True,
        )
    return edge, "", True
