"""`bench step`'s rounds: the order alternates between rounds, each run gets its own thread budget,
and the spreads are the per-round values' (hand-computed here from given step times)."""

from __future__ import annotations

import torch

from splitft.bench.common import spread
from splitft.bench.step import Run, interleaved


def test_rounds_alternate_the_order_and_ratios_are_per_round() -> None:
    calls: list[tuple[str, int]] = []
    times = {"a": iter([9.0, 9.0, 1.0, 2.0, 4.0]), "b": iter([9.0, 9.0, 2.0, 2.0, 2.0])}

    def step(name: str) -> float:
        calls.append((name, torch.get_num_threads()))
        return next(times[name])

    runs = {"a": Run(1, None, lambda: step("a")), "b": Run(2, 0, lambda: step("b"))}
    report = interleaved(runs, 3, (("a", "b"), ("b", "missing")), warmup_rounds=2)
    # two warm-up rounds in the listed order, then rounds forward, reversed, forward
    assert [name for name, _ in calls] == ["a", "b", "a", "b", "a", "b", "b", "a", "a", "b"]
    assert {name: threads for name, threads in calls} == {"a": 1, "b": 2}
    assert report["rounds"] == 3
    assert report["threads"] == {"a": {"device": 1, "edge": None}, "b": {"device": 2, "edge": 0}}
    assert report["step_seconds"]["a"] == spread([1.0, 2.0, 4.0])
    assert report["ratios"] == {"a_vs_b": spread([0.5, 1.0, 2.0], 3)}  # runs missing: no ratio
    assert report["ratios"]["a_vs_b"] == {"median": 1.0, "q1": 0.75, "q3": 1.5, "min": 0.5, "max": 2.0}


def test_spread_of_one_value() -> None:
    assert spread([0.25]) == {"median": 0.25, "q1": 0.25, "q3": 0.25, "min": 0.25, "max": 0.25}
