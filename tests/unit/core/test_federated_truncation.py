"""AirComp's truncation "auto": the closed-form expected error against the simulation it models, the
choice it makes at low and high SNR, and the threshold aircomp_round then applies."""

from __future__ import annotations

import numpy as np
import pytest

from splitft.errors import FailedPrecondition, InvalidArgument
from splitft.federated import Channel, aircomp_round
from splitft.federated.truncation import CANDIDATES, auto_truncation, expected_relative_error


def _shared_and_own(count: int, seed: int, entries: int = 4000) -> list[dict[str, np.ndarray]]:
    """The model's updates: a common direction plus each device's own part of equal power."""
    rng = np.random.default_rng(500 + seed)
    common = rng.normal(size=entries)
    return [{"w": (common + rng.normal(size=entries)).astype(np.float32)} for _ in range(count)]


def _simulated(truncation: float, snr_db: float, count: int, seeds: int = 300) -> float:
    """Mean relative error of aircomp_round over seeds; a lost round counts as 1 (update missing)."""
    errors = []
    for seed in range(seeds):
        try:
            result = aircomp_round(
                _shared_and_own(count, seed), [1.0] * count, snr_db=snr_db, truncation=truncation, seed=seed
            )
            errors.append(result.relative_error)
        except FailedPrecondition:
            errors.append(1.0)
    return float(np.mean(errors))


@pytest.mark.parametrize(("truncation", "snr_db"), [(0.01, 20.0), (0.1, 20.0), (0.1, 0.0), (0.3, 0.0)])
def test_the_closed_form_matches_the_simulation_it_models(truncation: float, snr_db: float) -> None:
    closed = expected_relative_error(truncation, snr_db, 4)
    assert closed == pytest.approx(_simulated(truncation, snr_db, 4), rel=0.12)


def test_auto_leaves_out_deep_fades_at_low_snr_and_almost_nobody_at_high_snr() -> None:
    assert auto_truncation(0.0, 4) == 0.3  # the noise a weak channel amplifies costs more than a device
    assert auto_truncation(10.0, 4) == 0.1
    assert auto_truncation(20.0, 4) == 0.01  # the fixed 0.1 would leave out 9.5% of draws for nothing
    assert auto_truncation(None, 4) == 0.01 and auto_truncation(40.0, 10) == 0.01
    assert auto_truncation(20.0, 4, "none") == CANDIDATES[0]  # no fading: nobody is below any candidate
    thresholds = [auto_truncation(snr, 4) for snr in (-10.0, 0.0, 10.0, 20.0, 30.0)]
    assert thresholds == sorted(thresholds, reverse=True)  # lower SNR, higher threshold
    # The choice is the candidate with the least expected error, and the same on every call.
    errors = {t: expected_relative_error(t, 10.0, 4) for t in CANDIDATES}
    assert auto_truncation(10.0, 4) == min(errors, key=errors.__getitem__)
    auto_truncation.cache_clear()
    assert auto_truncation(10.0, 4) == 0.1


def test_aircomp_round_applies_the_auto_threshold_and_reports_it() -> None:
    for snr_db, expected in ((0.0, 0.3), (20.0, 0.01)):
        dropped_any = False
        for seed in range(30):
            try:
                result = aircomp_round(
                    _shared_and_own(4, seed), [1, 2, 3, 4], snr_db=snr_db, truncation="auto", seed=seed
                )
            except FailedPrecondition as exc:  # every device under the threshold: the round is lost
                assert f"truncation {expected:g} " in exc.message
                continue
            assert result.truncation == expected
            assert result.dropped == tuple(k for k, g in enumerate(result.gains) if g < expected)
            dropped_any |= bool(result.dropped)
        assert dropped_any or expected == 0.01  # at 0.3 some of 30 rounds leave a device out
    fixed = aircomp_round(_shared_and_own(4, 0), [1, 1, 1, 1], snr_db=20.0, truncation=0.2, seed=0)
    assert fixed.truncation == 0.2  # a number is applied as given


def test_the_library_default_is_auto() -> None:
    default = aircomp_round(_shared_and_own(4, 3), [1, 1, 1, 1], snr_db=0.0, seed=3)
    assert default.truncation == auto_truncation(0.0, 4)
    assert Channel(snr_db=20.0).truncation == "auto"


@pytest.mark.parametrize("bad", ["automatic", "", "0.1"])
def test_a_truncation_word_other_than_auto_is_refused_by_name(bad: str) -> None:
    with pytest.raises(InvalidArgument, match=r"truncation must be a channel power gain >= 0 or 'auto'"):
        Channel(snr_db=20.0, truncation=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="truncation"):
        aircomp_round(_shared_and_own(2, 0), [1, 1], snr_db=20.0, truncation=bad, seed=0)  # type: ignore[arg-type]
