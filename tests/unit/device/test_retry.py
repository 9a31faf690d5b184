"""The device's retry policy: which failures are retried, bounded waits with full jitter, the budget,
and the request numbers that make a retry safe. A fake clock and a recording sleep stand in for
time (the waits are what is tested, not how long the test takes)."""

from __future__ import annotations

import math
import random

import grpc
import pytest

from device_client.retry import Backoff, RequestIds, RetryPolicy, call_with_retry, is_transient
from splitft.errors import (
    DeadlineExceeded,
    EdgeUnreachable,
    ErrorCode,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
    error_from_grpc,
)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"max_attempts": 0}, "max_attempts must be an integer >= 1"),
        ({"max_attempts": True}, "max_attempts must be an integer >= 1"),
        ({"budget_s": -1.0}, "budget_s must be a finite number >= 0"),
        ({"base_backoff_s": math.nan}, "base_backoff_s must be a finite number >= 0"),
        ({"max_backoff_s": math.inf}, "max_backoff_s must be a finite number >= 0"),
        ({"base_backoff_s": 2.0, "max_backoff_s": 1.0}, "must be at least base_backoff_s"),
    ],
)
def test_a_bad_policy_is_refused(fields, message) -> None:
    with pytest.raises(InvalidArgument, match=message):
        RetryPolicy(**fields)


def test_deadline_exceeded_is_its_own_unavailable() -> None:
    err = error_from_grpc(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
    assert type(err) is DeadlineExceeded and err.code is ErrorCode.UNAVAILABLE
    assert type(error_from_grpc(grpc.StatusCode.UNAVAILABLE, "reset")) is Unavailable


def test_what_is_transient() -> None:
    assert is_transient(Unavailable("reset"), idempotent=False)
    assert is_transient(DeadlineExceeded("slow"), idempotent=True)
    assert not is_transient(DeadlineExceeded("slow"), idempotent=False)  # it may have been applied
    for error in (EdgeUnreachable("gone"), InvalidArgument("bad"), NotFound("no"), PermissionDenied("no")):
        assert not is_transient(error, idempotent=True)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_waits_grow_exponentially_up_to_the_cap_with_full_jitter() -> None:
    policy = RetryPolicy(max_attempts=100, budget_s=1e9, base_backoff_s=0.5, max_backoff_s=4.0)
    backoff = Backoff(policy, random.Random(3), "Step", clock=FakeClock())
    waits = [backoff.failed(Unavailable("reset")) for _ in range(40)]
    bounds = [min(4.0, 0.5 * 2**i) for i in range(40)]
    assert all(0.0 <= w <= b for w, b in zip(waits, bounds, strict=True))
    assert max(waits[5:]) > 2.0 and min(waits[5:]) < 2.0  # drawn over the whole [0, cap], not a fixed step
    again = Backoff(policy, random.Random(3), "Step", clock=FakeClock())
    assert [again.failed(Unavailable("reset")) for _ in range(40)] == waits  # seeded: reproducible


def test_attempts_and_budget_bound_a_streak_and_progress_resets_it() -> None:
    clock = FakeClock()
    policy = RetryPolicy(max_attempts=3, budget_s=100.0, base_backoff_s=0.1, max_backoff_s=0.1)
    backoff = Backoff(policy, random.Random(0), "Step of session s", clock=clock)
    backoff.failed(Unavailable("reset"))
    backoff.failed(Unavailable("reset"))
    with pytest.raises(EdgeUnreachable, match=r"Step of session s: .* after 3 tries .* last error: reset"):
        backoff.failed(Unavailable("reset"))
    backoff.succeeded()
    assert backoff.failures == 0
    timed = Backoff(RetryPolicy(max_attempts=100, budget_s=10.0), random.Random(0), "Forward", clock=clock)
    timed.failed(Unavailable("reset"))
    clock.now += 10.0  # past the budget since the streak's first failure
    with pytest.raises(EdgeUnreachable, match=r"after 2 tries over 10\.0 s"):
        timed.failed(Unavailable("reset"))


def test_call_with_retry_retries_transient_failures_only() -> None:
    sleeps: list[float] = []
    outcomes: list[Exception | str] = [Unavailable("reset"), DeadlineExceeded("slow"), "ok"]

    def flaky() -> str:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    policy = RetryPolicy(seed=0)
    assert (
        call_with_retry(flaky, policy, policy.jitter(), what="Step", idempotent=True, sleep=sleeps.append)
        == "ok"
    )
    assert len(sleeps) == 2

    calls = []

    def refused() -> str:
        calls.append(1)
        raise InvalidArgument("bad lr")

    with pytest.raises(InvalidArgument):
        call_with_retry(refused, policy, policy.jitter(), what="Step", idempotent=True, sleep=sleeps.append)
    assert len(calls) == 1  # never retried

    def deadline() -> str:
        calls.append(1)
        raise DeadlineExceeded("slow")

    with pytest.raises(DeadlineExceeded):  # not numbered: it may have been applied, so not sent again
        call_with_retry(deadline, policy, policy.jitter(), what="Open", idempotent=False, sleep=sleeps.append)
    assert len(calls) == 2
    off = RetryPolicy.off()
    outcomes[:] = [Unavailable("reset"), "ok"]
    with pytest.raises(Unavailable):  # off: the first failure is raised as it comes
        call_with_retry(flaky, off, off.jitter(), what="Step", idempotent=True, sleep=sleeps.append)


def test_call_with_retry_gives_up_with_edge_unreachable() -> None:
    policy = RetryPolicy(max_attempts=4, seed=0)
    calls = []

    def gone() -> str:
        calls.append(1)
        raise Unavailable("connection refused")

    with pytest.raises(EdgeUnreachable, match="after 4 tries") as err:
        call_with_retry(gone, policy, policy.jitter(), what="Step", idempotent=True, sleep=lambda _: None)
    assert len(calls) == 4 and isinstance(err.value, Unavailable)  # resume catches either


def test_request_ids_count_up_and_say_what_the_device_has() -> None:
    ids = RequestIds()
    with ids.request() as first:
        assert (first.seq, first.answered_below) == (1, 1)
        with ids.request() as second:  # pipelined: the first still waits for its answer
            assert (second.seq, second.answered_below) == (2, 1)
    with ids.request() as third:
        assert (third.seq, third.answered_below) == (3, 3)
