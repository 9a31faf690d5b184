"""Metric points a session has not had acknowledged yet: kept while the control plane is down, sent
when it is back, and flushed (with retries) before the adapter upload closes the session.

During training a report is best effort: a failed one keeps its points, and the next try waits out a
jittered backoff (so a control plane that hangs instead of refusing costs a step at most one HTTP
timeout per backoff, not one per report). The buffer is bounded: past `limit` points the oldest are
dropped (and counted), because the newest say most about where training stands. Re-sending points
the control plane stored but whose answer was lost is harmless: it keeps one point per step.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from splitft.backoff import Backoff, ReconnectPolicy, retry_while
from splitft.errors import SplitftError, Unavailable

logger = logging.getLogger(__name__)
MAX_PENDING_POINTS = 10_000  # MetricsReport's own limit on one body
# Between reports that failed during training: short at first, never longer than a minute.
HOLD_OFF = ReconnectPolicy(base_delay_s=1.0, max_delay_s=60.0, budget_s=None)

Send = Callable[[list[dict[str, Any]]], None]


class MetricsBuffer:
    """The unacknowledged points of one session, oldest first."""

    def __init__(self, limit: int = MAX_PENDING_POINTS, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.points: list[dict[str, Any]] = []
        self.dropped = 0  # points dropped because the buffer was full
        self._clock = clock
        self._backoff = Backoff(HOLD_OFF, clock)
        self._not_before = 0.0

    def add(self, point: dict[str, Any]) -> None:
        """Keep a new point; past the limit the oldest one goes."""
        self.points.append(point)
        if len(self.points) > self.limit:
            over = len(self.points) - self.limit
            del self.points[:over]
            self.dropped += over
            logger.warning(
                "metrics buffer full (%d points): dropped the oldest, %d so far", self.limit, self.dropped
            )

    def send(self, send: Send) -> bool:
        """One best-effort report of every pending point, unless a recent failure says to wait;
        True when they were acknowledged."""
        if not self.points or self._clock() < self._not_before:
            return not self.points
        try:
            send(list(self.points))
        except Unavailable as exc:
            delay = self._backoff.next_delay() or 0.0
            self._not_before = self._clock() + delay
            logger.warning(
                "%d metric points kept for later (next try in %.0f s): %s",
                len(self.points),
                delay,
                exc.message,
            )
            return False
        self.points, self._not_before = [], 0.0
        self._backoff.reset()
        return True

    def flush(self, send: Send, policy: ReconnectPolicy, stop: threading.Event | None = None) -> bool:
        """Report every pending point, retrying an unreachable control plane within `policy`'s
        budget; True when acknowledged. Points still pending then are dropped (and logged): the
        adapter upload must not wait on them any longer."""
        if not self.points:
            return True
        try:
            retry_while(
                lambda: send(list(self.points)),
                lambda exc: isinstance(exc, Unavailable),
                policy,
                what=f"report {len(self.points)} metric points",
                stop=stop,
            )
        except SplitftError as exc:
            logger.warning(
                "dropped %d metric points the control plane did not take: %s", len(self.points), exc.message
            )
            self.dropped += len(self.points)
            self.points = []
            return False
        self.points = []
        return True


class MetricsWindow:
    """Loss and throughput since the last metrics report: one MetricPoint per report."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.examples = 0
        self.started = time.perf_counter()

    def reset(self) -> None:
        self.losses, self.examples, self.started = [], 0, time.perf_counter()

    def add(self, loss: float, examples: int) -> None:
        self.losses.append(loss)
        self.examples += examples

    def point(self, step: int, model: Any) -> dict[str, Any]:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        stats = model.stats  # a split model's or an offsite model's (no bytes)
        point = {
            "step": step,
            "loss": sum(self.losses) / len(self.losses),
            "examples_per_second": self.examples / elapsed,
            "bytes_sent": stats.bytes_sent,
            "bytes_received": stats.bytes_received,
        }
        self.reset()  # the next point covers only the steps after this one
        return point
