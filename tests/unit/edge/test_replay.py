"""The edge's replay window: a request id is applied once, its answer replayed, an id below the
window refused with a precise error, and the window stays bounded."""

from __future__ import annotations

import pytest

from edge_server.replay import ReplayWindow
from splitft.errors import FailedPrecondition, InvalidArgument
from splitft.v1 import dataplane_pb2 as pb


class Counter:
    """An 'apply' that changes state: each call is one more step."""

    def __init__(self) -> None:
        self.steps = 0

    def __call__(self) -> pb.StepResponse:
        self.steps += 1
        return pb.StepResponse(steps=self.steps)


def rid(seq: int, answered_below: int = 0) -> pb.RequestId:
    return pb.RequestId(seq=seq, answered_below=answered_below)


def test_a_retried_id_is_answered_from_the_window_and_applied_once() -> None:
    window, step = ReplayWindow(), Counter()
    first = window.run(rid(1, 1), ("step", 0), step)
    again = window.run(rid(1, 1), ("step", 0), step)
    assert step.steps == 1 and again is first and again.steps == 1
    assert (window.applied, window.replayed) == (1, 1)
    assert window.run(rid(2, 2), ("step", 0), step).steps == 2


def test_requests_without_an_id_apply_every_time() -> None:
    window, step = ReplayWindow(), Counter()
    for _ in range(3):
        window.run(pb.RequestId(), ("step", 0), step)
    assert step.steps == 3 and len(window) == 0


def test_answered_below_releases_answers_and_older_ids_are_refused() -> None:
    window, step = ReplayWindow(), Counter()
    window.run(rid(1, 1), ("step", 0), step)
    window.run(rid(2, 1), ("step", 0), step)
    assert len(window) == 2
    window.run(rid(3, 3), ("step", 0), step)  # the device has the answers of 1 and 2
    assert len(window) == 1 and window.floor == 3
    with pytest.raises(FailedPrecondition, match=r"request 2 \(step\) is below this session's replay window"):
        window.run(rid(2, 1), ("step", 0), step)
    assert step.steps == 3  # refused, not applied again


def test_ids_may_arrive_out_of_order_within_the_window() -> None:
    # Pipelined micro-batches: forward 5's request may be retried after forward 6 was applied.
    window, step = ReplayWindow(), Counter()
    window.run(rid(6, 4), ("forward", 2), step)
    window.run(rid(5, 4), ("forward", 1), step)
    assert step.steps == 2
    assert window.run(rid(5, 4), ("forward", 1), step).steps == 2


def test_a_reused_id_for_another_request_is_invalid() -> None:
    window, step = ReplayWindow(), Counter()
    window.run(rid(1, 1), ("forward", 1), step)
    with pytest.raises(InvalidArgument, match="request 1 was a forward of forward 1, not a backward of"):
        window.run(rid(1, 1), ("backward", 1), step)
    with pytest.raises(InvalidArgument, match="the device has the answers below 9, its own included"):
        window.run(rid(8, 9), ("step", 0), step)


def test_a_failed_request_stores_nothing_and_its_retry_applies() -> None:
    window, step = ReplayWindow(), Counter()

    def failing() -> pb.StepResponse:
        raise FailedPrecondition("step before ConfigureOptimizer")

    with pytest.raises(FailedPrecondition):
        window.run(rid(1, 1), ("step", 0), failing)
    assert window.run(rid(1, 1), ("step", 0), step).steps == 1


def test_the_window_is_bounded_by_count_and_bytes() -> None:
    window, step = ReplayWindow(capacity=4), Counter()
    for seq in range(1, 11):  # a client that never advances answered_below
        window.run(rid(seq), ("step", 0), step)
    assert len(window) == 4 and window.floor == 7
    with pytest.raises(FailedPrecondition, match="request 6"):
        window.run(rid(6), ("step", 0), step)
    big = pb.ForwardResponse(part=pb.TensorPart(chunk=pb.TensorChunk(data=b"x" * 1000)))
    small = ReplayWindow(max_bytes=2500)
    for seq in range(1, 5):
        small.run(rid(seq), ("forward", seq), lambda: [big])
    assert len(small) == 2 and small.stored_bytes <= 2500 and small.floor == 3
    lone = ReplayWindow(max_bytes=10)  # an answer over the bound alone is still kept until answered
    lone.run(rid(1), ("forward", 1), lambda: [big])
    assert len(lone) == 1
