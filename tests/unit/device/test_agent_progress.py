"""The agent's per-session progress lines (device_client/agent/progress.py): first step, then at most
one line per interval, and the last step; steps, loss since the last line, rate and time left."""

from __future__ import annotations

import logging

import pytest

from device_client.agent.progress import ProgressLog


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_lines_are_spaced_and_say_steps_loss_rate_and_time_left(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    log = ProgressLog("s-1", start=0, total=10, every_s=10.0, clock=clock)
    with caplog.at_level(logging.INFO, logger="device_client.agent.progress"):
        for step in range(1, 11):
            clock.now += 2.0  # a step every 2 s, 4 examples each: 2 examples/s
            log.step(step, loss=1.0 / step, examples=4)
    lines = [r.getMessage() for r in caplog.records]
    # step 1 (the first), step 6 (10 s after it), step 10 (the last): not one line per step
    assert [line.split(":")[1].split(",")[0].strip() for line in lines] == [
        "step 1/10 (10%)",
        "step 6/10 (60%)",
        "step 10/10 (100%)",
    ]
    assert lines[0] == (
        "session s-1: step 1/10 (10%), loss 1.0000, 2.0 examples/s, 0:00:02 elapsed, about 0:00:18 left"
    )
    # the second line's loss is the mean of steps 2-6, not the last step's
    assert f"loss {sum(1.0 / s for s in range(2, 7)) / 5:.4f}" in lines[1]
    assert lines[2].endswith("0:00:20 elapsed")  # done: no time left to announce


def test_a_resumed_session_counts_from_where_it_resumed(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    log = ProgressLog("s-2", start=6, total=8, clock=clock)
    with caplog.at_level(logging.INFO, logger="device_client.agent.progress"):
        clock.now += 1.0
        log.step(7, loss=0.5, examples=2)
    line = caplog.records[0].getMessage()
    assert line.startswith("session s-2: step 7/8 (87%), loss 0.5000, 2.0 examples/s")
    assert "about 0:00:01 left" in line
