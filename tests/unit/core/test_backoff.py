"""splitft.backoff: the waits an edge and a device use while the control plane is down."""

from __future__ import annotations

import threading

import pytest

from splitft.backoff import Backoff, ReconnectPolicy, retry_while
from splitft.errors import InvalidArgument, NotFound, Unavailable


class Clock:
    """A clock the test moves by hand (the waits themselves are real in retry_while's tests)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_waits_are_jittered_under_a_doubling_bound_capped_at_the_maximum() -> None:
    clock = Clock()
    backoff = Backoff(ReconnectPolicy(base_delay_s=1.0, max_delay_s=8.0, budget_s=None, seed=3), clock)
    bounds = [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    waits = [backoff.next_delay() for _ in bounds]
    assert all(w is not None and 0 <= w <= b for w, b in zip(waits, bounds, strict=True)), waits
    assert len(set(waits)) == len(waits)  # drawn, not fixed: devices cut off together spread out
    again = Backoff(ReconnectPolicy(base_delay_s=1.0, max_delay_s=8.0, budget_s=None, seed=3), clock)
    assert [again.next_delay() for _ in bounds] == waits  # a seed makes them reproducible


def test_the_budget_ends_a_streak_and_a_success_starts_a_new_one() -> None:
    clock = Clock()
    backoff = Backoff(ReconnectPolicy(base_delay_s=1.0, max_delay_s=4.0, budget_s=10.0, seed=0), clock)
    assert backoff.next_delay() is not None
    clock.now += 9.5
    last = backoff.next_delay()
    assert last is not None and last <= 0.5  # never waits past the budget
    clock.now += 0.5
    assert backoff.next_delay() is None and backoff.failures == 3
    backoff.reset()
    assert backoff.next_delay() is not None and backoff.failures == 1


def test_retry_while_retries_transient_failures_then_gives_up_with_the_last_error() -> None:
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise Unavailable("control plane unreachable")
        return "ok"

    policy = ReconnectPolicy(base_delay_s=0.01, max_delay_s=0.02, budget_s=5.0)
    transient = lambda exc: isinstance(exc, Unavailable)  # noqa: E731
    assert retry_while(flaky, transient, policy, what="test") == "ok" and len(calls) == 3

    def down() -> None:
        raise Unavailable("still down")

    with pytest.raises(Unavailable, match="still down"):
        retry_while(down, transient, ReconnectPolicy(0.01, 0.02, budget_s=0.1), what="test")

    def refused() -> None:
        calls.append(1)
        raise NotFound("no such session")

    calls.clear()
    with pytest.raises(NotFound):
        retry_while(refused, transient, policy, what="test")
    assert len(calls) == 1  # not transient: raised at once


def test_retry_while_stops_when_asked() -> None:
    stop = threading.Event()
    stop.set()
    calls: list[int] = []

    def down() -> None:
        calls.append(1)
        raise Unavailable("down")

    policy = ReconnectPolicy(base_delay_s=5.0, max_delay_s=5.0, budget_s=None)
    with pytest.raises(Unavailable):
        retry_while(down, lambda exc: True, policy, what="test", stop=stop)
    assert calls == [1]  # one try, no wait


@pytest.mark.parametrize(
    "kwargs",
    [
        {"base_delay_s": 0},
        {"base_delay_s": -1},
        {"max_delay_s": float("inf")},
        {"budget_s": -1},
        {"base_delay_s": 2.0, "max_delay_s": 1.0},
        {"base_delay_s": True},
    ],
)
def test_a_bad_policy_is_refused(kwargs: dict) -> None:
    with pytest.raises(InvalidArgument, match="reconnect"):
        ReconnectPolicy(**kwargs)
