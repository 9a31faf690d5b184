"""The agent's unacknowledged metric points (device_client/agent/metrics_buffer.py). The control plane
here is a function that raises what `ControlPlaneClient.report_metrics` raises when it is down; the
real one, killed and restarted, is in tests/e2e/test_control_plane_kill.py."""

from __future__ import annotations

from typing import Any

import pytest

from device_client.agent.metrics_buffer import MetricsBuffer
from splitft.backoff import ReconnectPolicy
from splitft.errors import FailedPrecondition, Unavailable


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class ControlPlane:
    """Takes reports while `up`; else raises Unavailable as an unreachable control plane does."""

    def __init__(self, up: bool = True) -> None:
        self.up = up
        self.tries = 0
        self.stored: list[dict[str, Any]] = []

    def __call__(self, points: list[dict[str, Any]]) -> None:
        self.tries += 1
        if not self.up:
            raise Unavailable("control plane unreachable (POST /metrics): ConnectError")
        self.stored += points


def point(step: int) -> dict[str, Any]:
    return {"step": step, "loss": 1.0 / step}


def test_points_wait_while_the_control_plane_is_down_and_go_when_it_is_back() -> None:
    clock, cp = Clock(), ControlPlane(up=False)
    buffer = MetricsBuffer(clock=clock)
    buffer.add(point(1))
    assert not buffer.send(cp) and cp.tries == 1
    buffer.add(point(2))
    assert not buffer.send(cp) and cp.tries == 1  # held off: a hung control plane cannot stall each step
    clock.now += 61  # past any hold-off (at most a minute)
    cp.up = True
    buffer.add(point(3))
    assert buffer.send(cp) and [p["step"] for p in cp.stored] == [1, 2, 3]
    assert buffer.points == [] and buffer.dropped == 0


def test_a_full_buffer_drops_the_oldest_points_and_counts_them() -> None:
    buffer = MetricsBuffer(limit=3)
    for step in range(1, 6):
        buffer.add(point(step))
    assert [p["step"] for p in buffer.points] == [3, 4, 5] and buffer.dropped == 2


def test_a_refusal_is_raised_not_kept() -> None:
    def closed(points: list[dict[str, Any]]) -> None:
        raise FailedPrecondition("session is succeeded: metrics are accepted only while it is running")

    buffer = MetricsBuffer()
    buffer.add(point(1))
    with pytest.raises(FailedPrecondition):
        buffer.send(closed)


def test_flush_retries_until_taken_or_drops_after_the_budget() -> None:
    cp = ControlPlane(up=False)
    buffer = MetricsBuffer()
    buffer.add(point(1))

    def comes_back(points: list[dict[str, Any]]) -> None:
        cp.up = cp.tries >= 2  # the third try finds it back
        cp(points)

    assert buffer.flush(comes_back, ReconnectPolicy(0.01, 0.02, budget_s=5.0))
    assert [p["step"] for p in cp.stored] == [1] and buffer.points == []
    cp.up = False
    buffer.add(point(2))
    assert not buffer.flush(cp, ReconnectPolicy(0.01, 0.02, budget_s=0.1))
    assert buffer.points == [] and buffer.dropped == 1  # the upload does not wait on them for ever
