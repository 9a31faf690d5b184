"""LR schedules of the split optimizer (device_client/optim.py)."""

from __future__ import annotations

import pytest

from device_client.optim import lr_factor
from splitft.errors import InvalidArgument


def test_lr_schedules_match_hand_computation() -> None:
    assert [lr_factor("constant", s, 2, 10) for s in range(4)] == [0.0, 0.5, 1.0, 1.0]
    assert [lr_factor("linear", s, 2, 10) for s in (2, 6, 10)] == [1.0, 0.5, 0.0]
    assert lr_factor("cosine", 6, 2, 10) == pytest.approx(0.5)
    assert lr_factor("cosine", 10, 0, 10) == pytest.approx(0.0)
    with pytest.raises(InvalidArgument, match="unknown LR schedule"):
        lr_factor("step", 5, 0, 10)
