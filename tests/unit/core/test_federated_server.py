"""FedAvgM's server step (`splitft.federated.server`): plain FedAvg at the defaults, heavy-ball
momentum recovered from the stored global adapters, and precise refusals."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from splitft.errors import InvalidArgument
from splitft.federated.server import ServerOptimizer, server_step


def _state(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "a": rng.standard_normal((3, 4)).astype(np.float32),
        "b": rng.standard_normal(5).astype(np.float32),
    }


def test_defaults_are_plain_fedavg_exactly() -> None:
    rng = np.random.default_rng(0)
    aggregate, previous, before = _state(rng), _state(rng), _state(rng)
    out = server_step(aggregate, previous, ServerOptimizer(), before_previous=before)
    assert all(np.array_equal(out[k], aggregate[k]) and out[k].dtype == np.float32 for k in aggregate)


def test_no_previous_global_means_no_step() -> None:
    rng = np.random.default_rng(1)
    aggregate = _state(rng)
    out = server_step(aggregate, None, ServerOptimizer(lr=2.0, momentum=0.9))
    assert all(np.array_equal(out[k], aggregate[k]) for k in aggregate)


@pytest.mark.parametrize(("lr", "momentum"), [(1.0, 0.9), (0.5, 0.5), (3.0, 0.0)])
def test_recovered_momentum_matches_a_stateful_heavy_ball(lr: float, momentum: float) -> None:
    """Five rounds, each stepped from the two globals before it, against the textbook update with
    the momentum buffer held in memory (round 0 unstepped, as from a fresh adapter)."""
    rng = np.random.default_rng(2)
    optimizer = ServerOptimizer(lr=lr, momentum=momentum)
    aggregates = [_state(rng) for _ in range(5)]
    globals_ = [server_step(aggregates[0], None, optimizer)]  # round 0: the aggregate itself
    expected = {k: v.astype(np.float64) for k, v in aggregates[0].items()}
    buffer = {k: np.zeros_like(v) for k, v in expected.items()}
    for r in range(1, 5):
        before = globals_[r - 2] if r >= 2 else None
        globals_.append(server_step(aggregates[r], globals_[r - 1], optimizer, before_previous=before))
        for k in expected:
            buffer[k] = momentum * buffer[k] + (aggregates[r][k].astype(np.float64) - expected[k])
            expected[k] = expected[k] + lr * buffer[k]
    for k in expected:
        np.testing.assert_allclose(globals_[-1][k], expected[k], rtol=1e-4, atol=1e-4)
    if momentum:  # the test can fail: momentum moved the result away from plain FedAvg
        assert not np.allclose(globals_[-1]["a"], aggregates[-1]["a"], atol=1e-3)


def test_server_lr_scales_the_step() -> None:
    previous = {"w": np.zeros(3, dtype=np.float32)}
    aggregate = {"w": np.array([1.0, -2.0, 0.5], dtype=np.float32)}
    out = server_step(aggregate, previous, ServerOptimizer(lr=2.0))
    np.testing.assert_array_equal(out["w"], np.array([2.0, -4.0, 1.0], dtype=np.float32))


@pytest.mark.parametrize(
    ("lr", "momentum", "message"),
    [
        (0.0, 0.0, "server_lr must be in (0, 10]"),
        (11.0, 0.0, "server_lr must be in (0, 10]"),
        (math.nan, 0.0, "server_lr must be a finite number"),
        (1.0, 1.0, "server_momentum must be in [0, 1)"),
        (1.0, -0.1, "server_momentum must be in [0, 1)"),
        (True, 0.0, "server_lr must be a finite number"),
    ],
)
def test_bad_settings_are_refused_by_name(lr: float, momentum: float, message: str) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(message)):
        ServerOptimizer(lr=lr, momentum=momentum)


def test_a_previous_global_of_another_layout_is_refused() -> None:
    aggregate = {"w": np.zeros(3, dtype=np.float32)}
    with pytest.raises(InvalidArgument, match="'w' is in the aggregate but not in the previous"):
        server_step(aggregate, {"v": np.zeros(3)}, ServerOptimizer(momentum=0.5))
    with pytest.raises(InvalidArgument, match=r"'w' has shape \[3\] in the aggregate and \[4\]"):
        server_step(aggregate, {"w": np.zeros(4)}, ServerOptimizer(momentum=0.5))
