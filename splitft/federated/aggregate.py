"""FedAvg and a simulation of over-the-air aggregation (AirComp), on NumPy state dicts.

Notation (docs/federated.md has the derivation): K devices send updates u_k (state dicts of one
layout) with weights w_k >= 0 (their example counts, say). FedAvg is sum_k w_k u_k / sum_k w_k.

AirComp, as in DEFT (Wu, Chen, Huang 2023) with the truncated channel inversion of Zhu, Wang, Huang
(2019): every entry of every tensor is one real channel use, sent by all devices at once.

1. Channel: device k sees a power gain g_k = |h_k|^2, Exp(1) for Rayleigh fading (mean 1), 1 without
   fading. Devices with g_k < ``truncation`` are in deep fade and sit the round out; S is the set
   of the others, |S| their number.
2. Pre-scaling: x_k = |S| a_k u_k with a_k = w_k / sum_{j in S} w_j, so that sum_{k in S} x_k / |S| is
   the FedAvg of the participants.
3. Power control: p_k = sqrt(eta) / h_k (the device inverts its channel, phase included, so that
   h_k p_k = sqrt(eta)). Device k's transmit power per entry is p_k^2 P_k = eta P_k / g_k where P_k is
   the mean square of x_k's entries; eta is the largest value that keeps every participant within
   ``power_limit``: eta = power_limit * min_{k in S} g_k / P_k.
4. Receiver: y = sum_{k in S} h_k p_k x_k + n, n ~ N(0, sigma^2) per entry, sigma^2 = 10^(-snr_db/10):
   ``snr_db`` is the SNR of a unit transmit power over a unit-gain channel, so a device at the default
   power_limit of 1 on a mean channel reaches exactly ``snr_db`` (only power_limit * 10^(snr_db/10)
   matters). The estimate is y / (|S| sqrt(eta)) = FedAvg over S + n / (|S| sqrt(eta)).

So with no noise and no fading it is FedAvg exactly; the error comes from the noise, amplified when
a weak channel or a large update forces a small eta, and from the devices left out.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from splitft.errors import FailedPrecondition
from splitft.federated.checks import StateDict, Updates, check_channel, check_updates
from splitft.federated.truncation import AUTO, Truncation, resolve_truncation

logger = logging.getLogger(__name__)

# "auto": the threshold with the least expected error at the round's SNR and device count
# (`splitft.federated.truncation`); a number is a fixed channel power gain (0.1 is -10 dB).
DEFAULT_TRUNCATION: Truncation = AUTO


@dataclass(frozen=True)
class Channel:
    """The radio of an AirComp round: ``aircomp_round``'s keyword arguments, checked when made."""

    snr_db: float | None  # dB of a unit transmit power over the noise; None or math.inf: no noise
    fading: str = "rayleigh"  # "rayleigh": gains |h_k|^2 ~ Exp(1); "none": every gain 1
    truncation: Truncation = DEFAULT_TRUNCATION  # gain below which a device sits out, or "auto"
    power_limit: float = 1.0  # transmit power per entry each device may spend

    def __post_init__(self) -> None:
        check_channel(self.snr_db, self.fading, self.truncation, self.power_limit)


@dataclass(frozen=True)
class AirCompRound:
    """One simulated AirComp round: the estimate and what a caller reports about it."""

    state: StateDict  # the estimated aggregate, float32 per key unless the inputs were float64
    participants: tuple[int, ...]  # indices into `updates` of the devices that transmitted
    gains: tuple[float, ...]  # channel power gain |h_k|^2 of every device, participants or not
    powers: tuple[float, ...]  # transmit power per entry of every device (0 for those left out)
    eta: float  # the common receive amplitude squared (the power-control factor)
    noise_variance: float  # sigma^2 per entry, 0 at infinite SNR
    mse: float  # mean over all entries of (estimate - FedAvg of all devices)^2
    relative_error: float  # ||estimate - FedAvg of all devices|| / ||FedAvg of all devices||
    truncation: float = 0.0  # the threshold applied (the radio's choice when "auto" was asked)

    @property
    def dropped(self) -> tuple[int, ...]:
        """Indices of the devices in deep fade that sat the round out."""
        return tuple(k for k in range(len(self.gains)) if k not in self.participants)


def fedavg(updates: Sequence[Mapping[str, Any]], weights: Sequence[float]) -> StateDict:
    """The weighted mean sum_k w_k u_k / sum_k w_k of state dicts of one layout.

    ``updates`` are state dicts (name -> array, anything ``np.asarray`` reads) of the same keys and
    shapes; ``weights`` one finite non-negative number per update, not all zero. Returns float32
    arrays, float64 for the keys some update sent as float64. Raises InvalidArgument naming the
    offending update, key, shape or weight.
    """
    checked = check_updates(updates, weights)
    return _cast(_weighted_mean(checked, range(len(checked.states))), checked)


def aircomp(
    updates: Sequence[Mapping[str, Any]],
    weights: Sequence[float],
    *,
    snr_db: float | None,
    fading: str = "rayleigh",
    truncation: Truncation = DEFAULT_TRUNCATION,
    power_limit: float = 1.0,
    seed: int | None = None,
) -> StateDict:
    """The AirComp estimate of ``fedavg(updates, weights)``; ``aircomp_round`` says how it went."""
    return aircomp_round(
        updates,
        weights,
        snr_db=snr_db,
        fading=fading,
        truncation=truncation,
        power_limit=power_limit,
        seed=seed,
    ).state


def aircomp_round(
    updates: Sequence[Mapping[str, Any]],
    weights: Sequence[float],
    *,
    snr_db: float | None,
    fading: str = "rayleigh",
    truncation: Truncation = DEFAULT_TRUNCATION,
    power_limit: float = 1.0,
    seed: int | None = None,
) -> AirCompRound:
    """Simulate one AirComp round (module docstring); the estimate with participants and error.

    ``snr_db``: dB of a unit transmit power over the noise, None or ``math.inf`` for no noise.
    ``fading``: "rayleigh" (gains Exp(1), drawn from ``seed``) or "none" (every gain 1).
    ``truncation``: the channel power gain below which a device sits the round out (0: never), or
    "auto": the candidate with the least expected error at this SNR and device count
    (`splitft.federated.truncation.auto_truncation`; 0.01 at 20 dB, 0.3 at 0 dB for 4 devices).
    ``power_limit``: each device's transmit power per entry. ``seed``: the channel and noise draws;
    the same seed gives the same round. Raises InvalidArgument for bad inputs and FailedPrecondition
    when no device with a positive weight is above the truncation threshold.
    """
    checked = check_updates(updates, weights)
    check_channel(snr_db, fading, truncation, power_limit)
    rng = np.random.default_rng(seed)
    count = len(checked.states)
    threshold = resolve_truncation(truncation, snr_db, count, fading, power_limit)
    gains = _gains(rng, count, fading)
    participants = [k for k in range(count) if gains[k] >= threshold]
    if not participants or checked.weights[participants].sum() <= 0:
        raise FailedPrecondition(
            f"no device with a positive weight has a channel gain >= truncation {threshold:g} "
            f"(gains {np.round(gains, 4).tolist()}); redo the round or lower the truncation"
        )
    scales = _prescale(checked, participants)
    eta, powers = _power_control(checked, scales, gains, power_limit)
    noise_variance = 0.0 if snr_db is None or math.isinf(snr_db) else 10.0 ** (-snr_db / 10.0)
    estimate = _receive(checked, scales, gains, eta, noise_variance, rng)
    reference = _weighted_mean(checked, range(count))
    mse, relative = _error(estimate, reference)
    logger.debug(
        "aircomp: %d of %d devices, eta %.3g, relative error %.3g", len(participants), count, eta, relative
    )
    return AirCompRound(
        state=_cast(estimate, checked),
        participants=tuple(participants),
        gains=tuple(float(g) for g in gains),
        powers=tuple(powers),
        eta=eta,
        noise_variance=noise_variance,
        mse=mse,
        relative_error=relative,
        truncation=threshold,
    )


def _weighted_mean(checked: Updates, devices: Sequence[int] | range) -> StateDict:
    """sum_k w_k u_k / sum_k w_k over ``devices``, in float64."""
    total = float(checked.weights[list(devices)].sum())
    out = {key: np.zeros(array.shape) for key, array in checked.states[0].items()}
    for k in devices:
        for key, array in checked.states[k].items():
            out[key] += float(checked.weights[k] / total) * array.astype(np.float64, copy=False)
    return out


def _gains(rng: np.random.Generator, count: int, fading: str) -> np.ndarray:
    """|h_k|^2 for each device: h_k complex Gaussian of unit variance (Rayleigh), or 1."""
    if fading == "none":
        return np.ones(count)
    parts = rng.standard_normal((count, 2)) / math.sqrt(2.0)
    return np.asarray((parts**2).sum(axis=1), dtype=np.float64)


def _prescale(checked: Updates, participants: list[int]) -> dict[int, float]:
    """s_k such that x_k = s_k u_k = |S| a_k u_k, a_k the weight renormalized over the participants."""
    total = float(checked.weights[participants].sum())
    return {k: len(participants) * float(checked.weights[k]) / total for k in participants}


def _power_control(
    checked: Updates, scales: dict[int, float], gains: np.ndarray, power_limit: float
) -> tuple[float, list[float]]:
    """eta = power_limit * min g_k / P_k over the participants, and each device's transmit power."""
    mean_square = {k: scale**2 * _mean_square(checked.states[k]) for k, scale in scales.items()}
    limits = [gains[k] / mean_square[k] for k in scales if mean_square[k] > 0]
    # With all-zero signals any eta meets the limit; take the channel-only one (unit-power symbols).
    eta = power_limit * (min(limits) if limits else min(gains[k] for k in scales))
    powers = [0.0] * len(gains)
    for k in scales:
        powers[k] = eta * mean_square[k] / float(gains[k])
    return float(eta), powers


def _mean_square(state: StateDict) -> float:
    """Mean of the squared entries, accumulated in float64 one tensor at a time."""
    entries = sum(a.size for a in state.values())
    total = sum(float(np.square(a, dtype=np.float64).sum()) for a in state.values())
    return total / max(entries, 1)


def _receive(
    checked: Updates,
    scales: dict[int, float],
    gains: np.ndarray,
    eta: float,
    noise_variance: float,
    rng: np.random.Generator,
) -> StateDict:
    """y = sum_k h_k p_k x_k + n, estimated as y / (|S| sqrt(eta)); noise drawn key by key, sorted."""
    root_eta = math.sqrt(eta)
    out: StateDict = {}
    for key in sorted(checked.states[0]):
        received = np.zeros(checked.states[0][key].shape)
        for k, scale in scales.items():
            # h_k p_k with p_k = sqrt(eta) / h_k: sqrt(eta) up to rounding (phase inverted with it).
            amplitude = math.sqrt(float(gains[k])) * (root_eta / math.sqrt(float(gains[k])))
            received += (amplitude * scale) * checked.states[k][key].astype(np.float64, copy=False)
        if noise_variance > 0:
            received += math.sqrt(noise_variance) * rng.standard_normal(received.shape)
        out[key] = received / (len(scales) * root_eta)
    return out


def _error(estimate: StateDict, reference: StateDict) -> tuple[float, float]:
    """Mean squared error per entry and relative L2 error of ``estimate`` against ``reference``."""
    squared = sum(float(np.square(estimate[k] - reference[k]).sum()) for k in reference)
    norm = sum(float(np.square(reference[k]).sum()) for k in reference)
    entries = sum(a.size for a in reference.values())
    relative = math.sqrt(squared / norm) if norm > 0 else (0.0 if squared == 0 else math.inf)
    return squared / max(entries, 1), relative


def _cast(state: StateDict, checked: Updates) -> StateDict:
    """Each key in its output dtype, in the key order of updates[0]."""
    return {key: state[key].astype(checked.dtypes[key]) for key in checked.states[0]}
