"""The agent's resume pieces without an edge: the data cursor, batches from a cursor, which errors
mean the edge is lost, and which checkpoint directories count (device_client/agent/resume.py)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from device_client.agent.datasets import TextExample, training_batches
from device_client.agent.resume import (
    SessionInterrupted,
    batches_from,
    check_cursor,
    data_cursor,
    data_fingerprint,
    has_checkpoint,
    is_edge_lost,
)
from device_client.checkpoint_files import write_checkpoint
from splitft.errors import (
    DeadlineExceeded,
    EdgeUnreachable,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)

EXAMPLES = [TextExample(f"text {i}", i % 3) for i in range(10)]  # batches of 4: 3 per epoch, the last of 2


@pytest.mark.parametrize("epochs", [None, 3])
def test_batches_from_a_cursor_are_the_uninterrupted_order_from_that_step(epochs: int | None) -> None:
    full = list(itertools.islice(training_batches(EXAMPLES, 4, seed=5, epochs=epochs), 9))
    fingerprint = data_fingerprint(EXAMPLES)
    for step in range(9):
        cursor = data_cursor(step, len(EXAMPLES), 4, fingerprint)
        assert (cursor["epoch"], cursor["index"]) == divmod(step, 3)
        rest = list(
            itertools.islice(batches_from(EXAMPLES, 4, seed=5, epochs=epochs, cursor=cursor), 9 - step)
        )
        assert rest == full[step:], step
    end = data_cursor(9, len(EXAMPLES), 4, fingerprint)
    assert list(batches_from(EXAMPLES, 4, seed=5, epochs=3, cursor=end)) == []  # past the last epoch


def test_a_cursor_from_other_data_or_another_step_is_refused() -> None:
    cursor = data_cursor(4, len(EXAMPLES), 4, data_fingerprint(EXAMPLES))
    assert check_cursor(cursor, 4, EXAMPLES, 4) == cursor
    changed = [*EXAMPLES[:-1], TextExample("text 9", 1)]  # one label differs
    with pytest.raises(FailedPrecondition, match="the local examples changed"):
        check_cursor(cursor, 4, changed, 4)
    with pytest.raises(FailedPrecondition, match="does not fit"):
        check_cursor(cursor, 5, EXAMPLES, 4)
    with pytest.raises(FailedPrecondition, match="does not fit"):
        check_cursor(None, 4, EXAMPLES, 4)  # a checkpoint written without the agent's cursor


def test_what_counts_as_a_lost_edge() -> None:
    lost = [
        EdgeUnreachable("Step of session s: the edge did not answer after 3 tries"),
        Unavailable("edge 127.0.0.1:1 not reachable"),
        DeadlineExceeded("deadline"),
        NotFound("unknown session 's-1'"),
    ]
    kept = [
        NotFound("this device has no local directory for model 'x'"),
        InvalidArgument("bad"),
        PermissionDenied("token"),
        FailedPrecondition("the loss became nan at step 3"),
        RuntimeError("torch"),
        SessionInterrupted("s-1", "waiting"),
    ]
    assert all(is_edge_lost(exc) for exc in lost)
    assert not any(is_edge_lost(exc) for exc in kept)


def test_only_a_verified_checkpoint_counts(tmp_path: Path) -> None:
    assert not has_checkpoint(tmp_path / "absent")
    assert not has_checkpoint(tmp_path)
    directory = write_checkpoint(tmp_path, 3, {"meta.json": b"{}"})
    assert has_checkpoint(tmp_path)
    (directory / "meta.json").write_bytes(b"{} ")  # no longer what the manifest says
    assert not has_checkpoint(tmp_path)
