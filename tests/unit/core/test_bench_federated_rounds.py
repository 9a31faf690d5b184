"""`bench federated`'s AirComp aggregation takes the plan's truncation threshold: the same channel
draws per round, a lower threshold keeping in exactly the devices a higher one left out; the
default is "auto" (0.01 at 20 dB for 4 devices), and each round records the threshold applied."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from splitft.bench.federated_rounds import Rounds, _aggregate
from splitft.bench.federated_train import write_state


def _left_out(truncation: float | None, start: Path, states: list, rounds: int = 20) -> list[int]:
    """Devices left out per round at `truncation` (None: the default threshold), seed 1, 20 dB."""
    counts = []
    for number in range(rounds):
        plan = (
            Rounds(rounds, 2, 20.0, 1)
            if truncation is None
            else Rounds(rounds, 2, 20.0, 1, truncation=truncation)
        )
        row: dict = {}
        assert _aggregate(plan, number, states, [10.0, 20.0, 30.0, 40.0], row, start) is not None
        assert row["truncation"] == (0.01 if truncation is None else truncation)
        counts.append(len(states) - row["participants"])
    return counts


def test_the_plan_s_truncation_threshold_decides_who_sits_out(tmp_path) -> None:
    rng = np.random.default_rng(0)
    base = {"w": rng.normal(size=64).astype(np.float32)}
    (tmp_path / "like").mkdir()
    (tmp_path / "like" / "adapter_config.json").write_text("{}")
    start = write_state(base, tmp_path / "like", tmp_path / "start")
    states = [{"w": base["w"] + 0.01 * rng.normal(size=64).astype(np.float32)} for _ in range(4)]
    default = _left_out(None, start, states)
    assert default == _left_out(0.01, start, states)  # "auto" at 20 dB and 4 devices is 0.01
    assert sum(_left_out(0.0, start, states)) == 0  # no threshold: every device in every round
    higher = _left_out(0.1, start, states)
    assert sum(higher) > 0
    assert all(low <= high for low, high in zip(default, higher, strict=True)) and sum(default) < sum(higher)
