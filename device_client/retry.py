"""Retrying the device's calls to its edge: which failures are transient, how long to keep trying,
and the numbers that make a retried request safe (docs/resilience.md).

A failure is transient when the edge may answer the same request later: UNAVAILABLE (the
connection broke, the edge restarts or sheds load), and DEADLINE_EXCEEDED only for a request the
edge applies once however often it arrives (a numbered request, `RequestIds`, or one that changes
nothing). Everything else (INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED, ...) would fail again
and is raised at once. Waits grow exponentially with full jitter (a uniform draw up to the bound,
so devices cut off together do not come back together); past `RetryPolicy.max_attempts` tries or
`budget_s` seconds the request fails with `EdgeUnreachable`, which resume catches.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

from splitft.errors import DeadlineExceeded, EdgeUnreachable, InvalidArgument, SplitftError, Unavailable
from splitft.v1 import dataplane_pb2 as pb

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How a device retries transient failures of the calls to its edge."""

    # Tries of one request, the first included; 1 never retries. Bounds a flapping link too.
    max_attempts: int = 12
    # Seconds from a request's first failure after which the device stops trying and raises
    # EdgeUnreachable: how long an edge may be gone before its session goes to resume.
    budget_s: float = 60.0
    # The first wait's upper bound; it doubles after each failure, up to max_backoff_s.
    base_backoff_s: float = 0.2
    max_backoff_s: float = 10.0
    # Seeds the jitter (reproducible waits in tests); None draws from the OS.
    seed: int | None = None

    def __post_init__(self) -> None:
        if (
            isinstance(self.max_attempts, bool)
            or not isinstance(self.max_attempts, int)
            or self.max_attempts < 1
        ):
            raise InvalidArgument(f"retry max_attempts must be an integer >= 1, got {self.max_attempts!r}")
        for name in ("budget_s", "base_backoff_s", "max_backoff_s"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value < 0
            ):
                raise InvalidArgument(f"retry {name} must be a finite number >= 0, got {value!r}")
        if self.max_backoff_s < self.base_backoff_s:
            raise InvalidArgument(
                f"retry max_backoff_s ({self.max_backoff_s}) must be at least "
                f"base_backoff_s ({self.base_backoff_s})"
            )

    @classmethod
    def off(cls) -> RetryPolicy:
        """Never retry: every failure is raised as it comes (the behaviour before retries)."""
        return cls(max_attempts=1)

    @property
    def enabled(self) -> bool:
        """Whether a failed request is ever tried again."""
        return self.max_attempts > 1

    def jitter(self) -> random.Random:
        """The random stream one client's waits are drawn from."""
        return random.Random(self.seed)


def is_transient(error: BaseException, *, idempotent: bool) -> bool:
    """Whether the same request may succeed if sent again (see the module's docstring)."""
    if isinstance(error, EdgeUnreachable):  # a retry loop below gave up already
        return False
    if isinstance(error, DeadlineExceeded):
        return idempotent
    return isinstance(error, Unavailable)


class Backoff:
    """One streak of failures of a request (or a stream): counts tries, keeps the budget's clock,
    and says how long to wait before the next try."""

    def __init__(
        self,
        policy: RetryPolicy,
        rng: random.Random,
        what: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self.what = what
        self._rng = rng
        self._clock = clock
        self._failures = 0
        self._since: float | None = None

    @property
    def failures(self) -> int:
        """Failures since the last success."""
        return self._failures

    def succeeded(self) -> None:
        """Progress: the next failure starts a new streak with the whole budget."""
        self._failures, self._since = 0, None

    def failed(self, error: SplitftError) -> float:
        """The seconds to wait before trying again, or EdgeUnreachable once the policy is spent."""
        now = self._clock()
        if self._since is None:
            self._since = now
        self._failures += 1
        elapsed = now - self._since
        bound = min(self.policy.max_backoff_s, self.policy.base_backoff_s * 2 ** (self._failures - 1))
        wait = self._rng.uniform(0.0, bound)
        if self._failures >= self.policy.max_attempts or elapsed + wait > self.policy.budget_s:
            raise EdgeUnreachable(
                f"{self.what}: the edge did not answer after {self._failures} tries over {elapsed:.1f} s "
                f"(retry policy: {self.policy.max_attempts} tries, {self.policy.budget_s:g} s); "
                f"last error: {error.message}"
            ) from error
        logger.warning("%s failed (%s); try %d in %.2f s", self.what, error.message, self._failures + 1, wait)
        return wait


def call_with_retry(
    call: Callable[[], T],
    policy: RetryPolicy,
    rng: random.Random,
    *,
    what: str,
    idempotent: bool,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """`call()`, tried again after transient failures as `policy` allows."""
    backoff = Backoff(policy, rng, what)
    while True:
        try:
            return call()
        except SplitftError as exc:
            if not policy.enabled or not is_transient(exc, idempotent=idempotent):
                raise
            sleep(backoff.failed(exc))


class RequestIds:
    """One session's request numbers (`pb.RequestId`): each new state-changing request takes the
    next, and the lowest still waiting for its answer tells the edge which answers it may forget."""

    def __init__(self) -> None:
        self._next = 1
        self._waiting: set[int] = set()
        self._lock = threading.Lock()

    @contextmanager
    def request(self) -> Iterator[pb.RequestId]:
        """A new number for one request, waiting until the block ends (answered or given up)."""
        with self._lock:
            seq, self._next = self._next, self._next + 1
            self._waiting.add(seq)
            request_id = pb.RequestId(seq=seq, answered_below=min(self._waiting))
        try:
            yield request_id
        finally:
            with self._lock:
                self._waiting.discard(seq)
