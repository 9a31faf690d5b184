"""A training session's progress in the agent's log: steps, loss, rate, time left.

A session can run for hours; its log says how far it is without flooding: the first step, then at
most one line per `every_s` seconds, and the last step.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import timedelta

logger = logging.getLogger(__name__)

PROGRESS_EVERY_S = 10.0


class ProgressLog:
    """Logs one session's progress; `step` is called after every optimizer step."""

    def __init__(
        self,
        session_id: str,
        start: int,
        total: int,
        *,
        every_s: float = PROGRESS_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.session_id = session_id
        self.start, self.total = start, total
        self.every_s = every_s
        self.clock = clock
        self.began = self.last_logged = clock()
        self.examples = 0
        self.losses: list[float] = []  # since the last line
        self.lines = 0

    def step(self, step: int, loss: float, examples: int) -> None:
        self.examples += examples
        self.losses.append(loss)
        now = self.clock()
        if step == self.start + 1 or step == self.total or now - self.last_logged >= self.every_s:
            self._log(step, now)

    def _log(self, step: int, now: float) -> None:
        elapsed = now - self.began
        rate = self.examples / elapsed if elapsed > 0 else 0.0
        done = step - self.start
        steps_per_s = done / elapsed if elapsed > 0 else 0.0
        left = (self.total - step) / steps_per_s if steps_per_s > 0 else None
        loss = sum(self.losses) / len(self.losses)
        logger.info(
            "session %s: step %d/%d (%d%%), loss %.4f, %.1f examples/s, %s elapsed%s",
            self.session_id,
            step,
            self.total,
            100 * step // max(1, self.total),
            loss,
            rate,
            _duration(elapsed),
            "" if left is None or step == self.total else f", about {_duration(left)} left",
        )
        self.losses = []
        self.last_logged = now
        self.lines += 1


def _duration(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))
