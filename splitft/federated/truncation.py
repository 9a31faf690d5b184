"""AirComp's truncation threshold chosen from the radio: ``truncation="auto"``.

The threshold trades two errors (docs/federated.md, "Error to expect"): a device in deep fade left
in forces a small eta and amplifies the receiver noise; left out, its update is missing. Which
costs more depends on the SNR and the number of devices K: at 0 dB a threshold of 0.1 to 0.3 is
best, at 20 dB and above 0.01 (a fixed 0.1 leaves out 9.5% of Rayleigh draws for nothing there).

``auto_truncation`` picks, from ``CANDIDATES``, the threshold with the least expected relative
error of the AirComp estimate against FedAvg, in closed form per channel draw for the error table's
update model: K updates u_k = c + e_k (a shared direction and each device's own part, of equal
power; equal weights). With S the devices at or above the threshold (s of them), the estimate is
mean_S u + n / (s sqrt(eta)), eta = power_limit * min_S g / 2 (P_k = 2 per entry), so per entry

    E|estimate - mean_all u|^2 = (1/s - 1/K) + sigma^2 / (s^2 eta),   E|mean_all u|^2 = 1 + 1/K,

and a round with nobody above the threshold is lost (relative error 1: the update is missing).
The mean over ``DRAWS`` seeded Rayleigh draws of sqrt(ratio) is the expected relative error; it
matches `aircomp_round` on such updates (tests/unit/core/test_federated_truncation.py). The choice
is deterministic for a given (snr_db, K, fading, power_limit) and cached.
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import numpy as np

AUTO: Literal["auto"] = "auto"
Truncation = float | Literal["auto"]
CANDIDATES = (0.01, 0.03, 0.1, 0.3)  # not 0: one near-zero gain would shrink eta without bound
DRAWS = 4000  # channel draws per candidate (fewer for very large K: at most MAX_GAINS gains)
MAX_GAINS = 4_000_000


def resolve_truncation(
    truncation: Truncation, snr_db: float | None, devices: int, fading: str, power_limit: float
) -> float:
    """The threshold to apply: ``truncation`` itself, or the radio's choice when it is "auto"."""
    if truncation == AUTO:
        return auto_truncation(snr_db, devices, fading, power_limit)
    return float(truncation)


@functools.lru_cache(maxsize=256)
def auto_truncation(
    snr_db: float | None, devices: int, fading: str = "rayleigh", power_limit: float = 1.0
) -> float:
    """The candidate threshold with the least expected relative error (module docstring)."""
    if fading == "none" or devices < 1:
        return CANDIDATES[0]  # every gain is 1: no threshold below 1 leaves anybody out
    errors = {t: expected_relative_error(t, snr_db, devices, power_limit) for t in CANDIDATES}
    return min(CANDIDATES, key=lambda t: (errors[t], t))


def expected_relative_error(
    truncation: float, snr_db: float | None, devices: int, power_limit: float = 1.0
) -> float:
    """Mean relative error against FedAvg over seeded Rayleigh draws, the model of the docstring."""
    noise = 0.0 if snr_db is None or math.isinf(snr_db) else 10.0 ** (-snr_db / 10.0)
    draws = max(100, min(DRAWS, MAX_GAINS // devices))
    gains = np.random.default_rng(0).exponential(size=(draws, devices))
    inside = gains >= truncation
    s = inside.sum(axis=1).astype(np.float64)
    weakest = np.where(inside, gains, np.inf).min(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        eta = power_limit * weakest / 2.0
        squared = (1.0 / s - 1.0 / devices) + noise / (s**2 * eta)
        relative = np.sqrt(squared / (1.0 + 1.0 / devices))
    relative = np.where(s > 0, relative, 1.0)  # a lost round: the whole update is missing
    return float(relative.mean())
