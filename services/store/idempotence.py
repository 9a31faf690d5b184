"""What makes a device's retried request safe: a report or upload whose answer was lost (the control
plane stored it, then died or the connection broke) is sent again, and must change nothing more.

Metric points are one per step of a session: points for steps already stored are dropped. An
adapter upload repeated to the session it already closed, with the same bytes, is acknowledged again.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from splitft_control.models import JobSession, Metric


def new_points(s: Session, session_id: str, points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`points` less those whose step the session has stored already (and repeats within `points`:
    the first one of a step wins)."""
    steps = {int(point["step"]) for point in points}
    if not steps:
        return points
    stored = set(
        s.scalars(select(Metric.step).where(Metric.session_id == session_id, Metric.step.in_(steps)))
    )
    fresh: list[dict[str, Any]] = []
    for point in points:
        if point["step"] not in stored:
            stored.add(point["step"])
            fresh.append(point)
    return fresh


def is_repeated_upload(sess: JobSession, adapter: bytes, examples: int | None) -> bool:
    """Whether this upload is the one the succeeded session already holds (a retry)."""
    if sess.state != "succeeded" or sess.adapter is None:
        return False
    same_weight = sess.round is None or sess.examples == examples
    return same_weight and bytes(sess.adapter) == adapter
