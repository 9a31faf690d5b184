"""A child process that is not healthy in time is stopped, not left running orphaned (seen on a
loaded machine: `bench federated`'s edge took over 120 s to start, the bench gave up, and the edge
process lived on). Real processes, given no time to become healthy."""

from __future__ import annotations

import pytest

from splitft.errors import Unavailable
from splitft.local.launch import ControlProcess, EdgeProcess


def test_an_edge_not_healthy_in_time_is_stopped(tmp_path) -> None:
    edge = EdgeProcess([f"minilm={tmp_path}"], log_path=str(tmp_path / "edge.log"))
    with pytest.raises(Unavailable, match="not healthy after 0 s"):
        edge.start(timeout=0.0)
    assert edge.process is not None and edge.process.poll() is not None


def test_a_control_plane_not_healthy_in_time_is_stopped(tmp_path) -> None:
    control = ControlProcess(
        tmp_path, operator_key="k" * 32, edge_secret="s" * 32, log_path=str(tmp_path / "control.log")
    )
    with pytest.raises(Unavailable, match="not healthy after 0 s"):
        control.start(timeout=0.0)
    assert control.process is not None and control.process.poll() is not None
