"""Waiting for the control plane to come back: exponential backoff with full jitter, bounded.

The device agent (its polls, metric reports, adapter upload and failure report) and the edge (its
registration and heartbeats) retry a control plane that is down or restarting with the same policy
(docs/resilience.md, "The control plane loses nothing"). Each wait is drawn uniformly up to a bound
that doubles after every failure, up to `max_delay_s` ("full jitter": clients cut off together do
not come back together); `budget_s` bounds the whole streak, after which the caller gives up.
Standard library only: the edge and the device both use it.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from splitft.errors import InvalidArgument

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class ReconnectPolicy:
    """How long and how often to retry a control plane that does not answer."""

    base_delay_s: float = 0.5  # the first wait's bound; it doubles after each failure
    max_delay_s: float = 30.0  # no wait is longer than this
    budget_s: float | None = 600.0  # give up this long after the first failure; None: never
    seed: int | None = None  # seeds the jitter (reproducible waits in tests); None: from the OS

    def __post_init__(self) -> None:
        for name in ("base_delay_s", "max_delay_s", "budget_s"):
            value = getattr(self, name)
            if value is None and name == "budget_s":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InvalidArgument(f"reconnect {name} must be a finite number, got {value!r}")
            if value < 0 or (name == "base_delay_s" and value == 0):
                raise InvalidArgument(f"reconnect {name} must be > 0 (budget_s >= 0), got {value!r}")
        if self.max_delay_s < self.base_delay_s:
            raise InvalidArgument(
                f"reconnect max_delay_s ({self.max_delay_s}) must be at least "
                f"base_delay_s ({self.base_delay_s})"
            )


class Backoff:
    """One streak of failures: how long to wait before the next try, and whether the budget is spent."""

    def __init__(self, policy: ReconnectPolicy, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self._rng = random.Random(policy.seed)
        self._clock = clock
        self.failures = 0
        self._since: float | None = None

    def reset(self) -> None:
        """A success: the next failure starts a new streak with the whole budget."""
        self.failures, self._since = 0, None

    def next_delay(self) -> float | None:
        """Record a failure; the seconds to wait before the next try, or None once the budget is spent."""
        now = self._clock()
        if self._since is None:
            self._since = now
        self.failures += 1
        bound = min(self.policy.max_delay_s, self.policy.base_delay_s * 2 ** min(self.failures - 1, 60))
        delay = self._rng.uniform(0, bound)
        budget = self.policy.budget_s
        if budget is not None:
            left = self._since + budget - now
            if left <= 0:
                return None
            delay = min(delay, left)
        return delay


def retry_while(
    call: Callable[[], T],
    transient: Callable[[Exception], bool],
    policy: ReconnectPolicy,
    *,
    what: str,
    stop: threading.Event | None = None,
) -> T:
    """`call()`, tried again after each transient failure with jittered backoff until it succeeds,
    the budget is spent (the last error is raised) or `stop` is set (the last error is raised)."""
    backoff = Backoff(policy)
    stop = stop or threading.Event()
    while True:
        try:
            return call()
        except Exception as exc:
            if not transient(exc):
                raise
            delay = backoff.next_delay()
            if delay is None or stop.is_set():
                logger.warning("giving up: could not %s after %d tries: %s", what, backoff.failures, exc)
                raise
            logger.warning("could not %s (try %d), again in %.1f s: %s", what, backoff.failures, delay, exc)
            if stop.wait(delay):
                raise
