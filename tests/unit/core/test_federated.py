"""FedAvg and the AirComp simulation (splitft.federated): exactness, the error against SNR, truncation,
power control, determinism and the refusals."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from splitft.errors import FailedPrecondition, InvalidArgument
from splitft.federated import Channel, aircomp, aircomp_round, fedavg

ROOT = Path(__file__).resolve().parents[3]


def _updates(count: int, seed: int = 0, entries: int = 2000) -> list[dict[str, np.ndarray]]:
    """LoRA-like updates: a shared direction plus each device's own part, in two tensors."""
    rng = np.random.default_rng(seed)
    common_a, common_b = rng.normal(size=(entries // 40, 20)), rng.normal(size=(entries // 2,))
    return [
        {
            "lora_A": (common_a + rng.normal(size=common_a.shape)).astype(np.float32),
            "lora_B": (common_b + rng.normal(size=common_b.shape)).astype(np.float32),
        }
        for _ in range(count)
    ]


def test_fedavg_is_the_weighted_mean_exactly() -> None:
    updates = [
        {"w": np.array([1.0, 2.0]), "b": np.array([[4.0]])},
        {"w": np.array([5.0, -2.0]), "b": np.array([[0.0]])},
    ]
    out = fedavg(updates, [1, 3])
    np.testing.assert_array_equal(out["w"], [4.0, -1.0])
    np.testing.assert_array_equal(out["b"], [[1.0]])
    assert list(out) == ["w", "b"] and out["w"].dtype == np.float64


def test_output_dtypes_and_torch_tensors() -> None:
    # float32 out unless a device sent float64; CPU torch tensors are read through np.asarray.
    half = [{"x": np.ones(3, np.float16)}, {"x": torch.full((3,), 3.0)}]
    out = fedavg(half, [1, 1])
    assert out["x"].dtype == np.float32
    np.testing.assert_array_equal(out["x"], [2.0, 2.0, 2.0])
    mixed = [{"x": np.ones(2, np.float32)}, {"x": np.ones(2, np.float64)}]
    assert fedavg(mixed, [1, 1])["x"].dtype == np.float64


@pytest.mark.parametrize("snr_db", [None, math.inf])
def test_aircomp_without_noise_or_fading_is_fedavg(snr_db: float | None) -> None:
    updates, weights = _updates(5), [10, 20, 5, 40, 1]
    expected = fedavg(updates, weights)
    result = aircomp_round(updates, weights, snr_db=snr_db, fading="none", seed=3)
    assert result.participants == (0, 1, 2, 3, 4) and result.noise_variance == 0.0
    for key, value in expected.items():
        np.testing.assert_allclose(result.state[key], value, atol=1e-6, rtol=0)
    assert result.relative_error < 1e-6


def test_channel_inversion_cancels_rayleigh_fading_without_noise() -> None:
    updates, weights = _updates(6), [1, 2, 3, 4, 5, 6]
    result = aircomp_round(updates, weights, snr_db=None, fading="rayleigh", truncation=0.0, seed=1)
    assert len(set(result.gains)) == 6 and result.participants == tuple(range(6))
    assert result.relative_error < 1e-6


def _mean_errors(fading: str) -> list[float]:
    """Mean relative error against FedAvg over 8 seeds at 30, 20, 10 and 0 dB."""
    updates, weights = _updates(4), [30, 10, 20, 40]
    means = []
    for snr_db in (30, 20, 10, 0):
        rounds = [aircomp_round(updates, weights, snr_db=snr_db, fading=fading, seed=s) for s in range(8)]
        means.append(float(np.mean([r.relative_error for r in rounds])))
    return means


def test_error_grows_as_snr_falls() -> None:
    # With fading the error at high SNR has a floor: the devices truncation leaves out.
    faded = _mean_errors("rayleigh")
    assert faded == sorted(faded) and faded[-1] > 4 * faded[0], faded
    # Without it the error is noise alone: sqrt(10) more for every 10 dB less.
    clear = _mean_errors("none")
    for higher, lower in zip(clear, clear[1:], strict=False):
        assert lower / higher == pytest.approx(math.sqrt(10), rel=0.1), clear


def test_noise_matches_the_formula_without_fading() -> None:
    # Error per entry: sigma^2 / (K^2 eta) with eta = power_limit / max_k P_k (all gains 1).
    updates, weights = _updates(4, entries=20000), [1, 1, 1, 1]
    result = aircomp_round(updates, weights, snr_db=10, fading="none", power_limit=2.0, seed=0)
    largest = max(
        float(np.mean(np.concatenate([a.ravel().astype(np.float64) ** 2 for a in u.values()])))
        for u in updates
    )
    assert result.eta == pytest.approx(2.0 / largest, rel=1e-9)
    expected = result.noise_variance / (16 * result.eta)
    assert result.noise_variance == pytest.approx(0.1)
    assert result.mse == pytest.approx(expected, rel=0.05)


def test_power_limit_is_met_and_reached() -> None:
    result = aircomp_round(_updates(5), [1, 2, 3, 4, 5], snr_db=10, power_limit=0.5, seed=4)
    active = [result.powers[k] for k in result.participants]
    assert max(active) == pytest.approx(0.5) and all(p <= 0.5 * (1 + 1e-12) for p in active)
    assert all(result.powers[k] == 0.0 for k in result.dropped)


def test_truncation_drops_devices_in_deep_fade() -> None:
    updates, weights = _updates(8), [3, 1, 4, 1, 5, 9, 2, 6]
    seed = next(s for s in range(100) if 0 < len(_round(updates, weights, s).dropped) < 4)
    result = _round(updates, weights, seed)
    assert result.dropped == tuple(k for k, g in enumerate(result.gains) if g < 0.8)
    assert set(result.participants).isdisjoint(result.dropped)
    kept = list(result.participants)
    expected = fedavg([updates[k] for k in kept], [weights[k] for k in kept])
    for key, value in expected.items():  # the participants' FedAvg, their weights renormalized
        np.testing.assert_allclose(result.state[key], value, atol=1e-6, rtol=0)
    assert result.relative_error > 1e-3  # ... which is not everybody's FedAvg


def _round(updates: list[dict[str, np.ndarray]], weights: list[int], seed: int):  # type: ignore[no-untyped-def]
    return aircomp_round(updates, weights, snr_db=None, truncation=0.8, seed=seed)


def test_every_device_in_deep_fade_is_refused() -> None:
    with pytest.raises(FailedPrecondition, match="no device with a positive weight"):
        aircomp(_updates(2), [1, 1], snr_db=10, fading="none", truncation=1.5, seed=0)


def test_same_seed_same_round_other_seed_other_round() -> None:
    updates, weights = _updates(4), [1, 2, 3, 4]
    first, again = (aircomp_round(updates, weights, snr_db=5, seed=7) for _ in range(2))
    other = aircomp_round(updates, weights, snr_db=5, seed=8)
    assert first.gains == again.gains and first.participants == again.participants
    for key in first.state:
        np.testing.assert_array_equal(first.state[key], again.state[key])
        assert not np.array_equal(first.state[key], other.state[key])


@pytest.mark.parametrize(
    ("updates", "weights", "message"),
    [
        ([], [], "non-empty sequence of state dicts"),
        ({"x": np.ones(2)}, [1], "non-empty sequence of state dicts"),
        ([{"x": np.ones(2)}, {"x": np.ones(2)}], [1], "weights has 1 entries for 2 updates"),
        ([{"x": np.ones(2)}], [-1], r"weights\[0\] must be finite and >= 0, got -1"),
        ([{"x": np.ones(2)}], [math.nan], r"weights\[0\] must be finite"),
        ([{"x": np.ones(2)}], [True], r"weights\[0\] must be a number, got True"),
        ([{"x": np.ones(2)}, {"x": np.ones(2)}], [0, 0], "must not all be zero"),
        (
            [{"x": np.ones(2)}, {"y": np.ones(2)}],
            [1, 1],
            r"updates\[1\] has other keys .* missing \['x'\], unexpected \['y'\]",
        ),
        (
            [{"x": np.ones(2)}, {"x": np.ones(3)}],
            [1, 1],
            r"updates\[1\]\['x'\] has shape \(3,\), updates\[0\]\['x'\] has \(2,\)",
        ),
        ([{"x": np.arange(2)}], [1], r"updates\[0\]\['x'\] must hold floating-point values, got dtype int64"),
        ([{"x": np.array([1.0, np.nan])}], [1], r"updates\[0\]\['x'\] holds non-finite values"),
        (
            [{"x": torch.ones(2, dtype=torch.bfloat16)}],
            [1],
            r"updates\[0\]\['x'\] cannot be read .* bfloat16",
        ),
        ([{}], [1], r"updates\[0\] is an empty state dict"),
        ([[1.0]], [1], r"updates\[0\] must be a state dict"),
    ],
)
def test_bad_updates_and_weights_are_refused(updates: object, weights: object, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        fedavg(updates, weights)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match=message):
        aircomp(updates, weights, snr_db=10, seed=0)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("channel", "message"),
    [
        ({"snr_db": math.nan}, "snr_db must be a finite number of dB or \\+inf"),
        ({"snr_db": "10"}, "snr_db must be a number in dB"),
        ({"snr_db": 10, "fading": "rician"}, "fading must be one of rayleigh, none, got 'rician'"),
        ({"snr_db": 10, "truncation": -0.1}, "truncation is a channel power gain and must be >= 0"),
        ({"snr_db": 10, "power_limit": 0}, "power_limit must be > 0, got 0"),
        ({"snr_db": 10, "power_limit": math.inf}, "power_limit must be a finite number"),
    ],
)
def test_bad_channels_are_refused(channel: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        aircomp(_updates(2), [1, 1], seed=0, **channel)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match=message):
        Channel(**channel)  # type: ignore[arg-type]


def test_aggregation_runs_where_torch_cannot_be_imported() -> None:
    # The control plane aggregates with this package and has no torch.
    code = (
        "import sys\n"
        "for name in ('torch', 'transformers', 'peft', 'accelerate'):\n"
        "    sys.modules[name] = None\n"
        "import numpy as np\n"
        "from splitft.federated import aircomp, fedavg, aggregate_adapter_files\n"
        "u = [{'x': np.ones(3, np.float32)}, {'x': np.zeros(3, np.float32)}]\n"
        "print(fedavg(u, [1, 1])['x'].tolist(), aircomp(u, [1, 1], snr_db=None, seed=0)['x'].dtype)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[0.5, 0.5, 0.5] float32"
