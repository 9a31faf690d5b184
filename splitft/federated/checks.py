"""Checks of what the aggregators receive: state dicts of one layout, weights, channel parameters.

Everything here is NumPy: the control plane aggregates with it and never imports torch. A CPU torch
tensor passes because ``np.asarray`` reads it; a bfloat16 one does not (NumPy has no bfloat16), and
the error says to cast it first.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from splitft.errors import InvalidArgument

StateDict = dict[str, np.ndarray]
FADINGS = ("rayleigh", "none")


@dataclass(frozen=True)
class Updates:
    """Validated updates (the callers' arrays, not copies: never written to), output dtypes, weights."""

    states: tuple[StateDict, ...]  # read in float64 one key at a time, so no copy of them all
    dtypes: dict[str, np.dtype]  # float64 where any device sent float64, else float32
    weights: np.ndarray  # the caller's weights as float64, not normalized


def check_updates(updates: Sequence[Mapping[str, Any]], weights: Sequence[float]) -> Updates:
    """Validate ``updates`` and ``weights``; raise InvalidArgument naming the update, key or weight."""
    if isinstance(updates, Mapping) or not isinstance(updates, Sequence) or not updates:
        raise InvalidArgument("updates must be a non-empty sequence of state dicts (name -> array)")
    checked_weights = check_weights(weights, len(updates))
    first = _as_state(updates[0], 0)
    states = [first]
    for index in range(1, len(updates)):
        state = _as_state(updates[index], index)
        _check_layout(first, state, index)
        states.append(state)
    dtypes = {key: _out_dtype([state[key].dtype for state in states]) for key in first}
    return Updates(
        states=tuple(states),
        dtypes=dtypes,
        weights=checked_weights,
    )


def check_weights(weights: Sequence[float], count: int) -> np.ndarray:
    """``count`` finite, non-negative weights with a positive sum, as float64."""
    if isinstance(weights, (str, bytes, Mapping)) or not isinstance(weights, Sequence):
        raise InvalidArgument(f"weights must be a sequence of {count} numbers, got {type(weights).__name__}")
    if len(weights) != count:
        raise InvalidArgument(f"weights has {len(weights)} entries for {count} updates; give one per update")
    values = []
    for index, weight in enumerate(weights):
        if isinstance(weight, bool) or not isinstance(weight, (int, float, np.integer, np.floating)):
            raise InvalidArgument(f"weights[{index}] must be a number, got {weight!r}")
        if not math.isfinite(weight) or weight < 0:
            raise InvalidArgument(f"weights[{index}] must be finite and >= 0, got {weight!r}")
        values.append(float(weight))
    if sum(values) <= 0:
        raise InvalidArgument(f"weights must not all be zero, got {list(weights)}")
    return np.asarray(values, dtype=np.float64)


def check_channel(snr_db: float | None, fading: str, truncation: float | str, power_limit: float) -> None:
    """Refuse channel parameters out of range, naming the parameter."""
    if snr_db is not None:
        if isinstance(snr_db, bool) or not isinstance(snr_db, (int, float)):
            raise InvalidArgument(f"snr_db must be a number in dB, None or math.inf, got {snr_db!r}")
        if math.isnan(snr_db) or snr_db == -math.inf:
            raise InvalidArgument(f"snr_db must be a finite number of dB or +inf, got {snr_db!r}")
    if fading not in FADINGS:
        raise InvalidArgument(f"fading must be one of {', '.join(FADINGS)}, got {fading!r}")
    if isinstance(truncation, str):
        if truncation != "auto":
            raise InvalidArgument(
                f"truncation must be a channel power gain >= 0 or 'auto', got {truncation!r}"
            )
        truncation = 0.0
    for name, value in (("truncation", truncation), ("power_limit", power_limit)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InvalidArgument(f"{name} must be a finite number, got {value!r}")
    if truncation < 0:
        raise InvalidArgument(f"truncation is a channel power gain and must be >= 0, got {truncation!r}")
    if power_limit <= 0:
        raise InvalidArgument(f"power_limit must be > 0, got {power_limit!r}")


def _as_state(update: object, index: int) -> StateDict:
    """One update as name -> finite floating NumPy array."""
    if not isinstance(update, Mapping):
        raise InvalidArgument(
            f"updates[{index}] must be a state dict (name -> array), got {type(update).__name__}"
        )
    if not update:
        raise InvalidArgument(f"updates[{index}] is an empty state dict")
    state: StateDict = {}
    for key, value in update.items():
        if not isinstance(key, str):
            raise InvalidArgument(f"updates[{index}] has a non-string key {key!r}")
        state[key] = _as_array(value, index, key)
    return state


def _as_array(value: object, index: int, key: str) -> np.ndarray:
    where = f"updates[{index}][{key!r}]"
    try:
        array = np.asarray(value)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InvalidArgument(
            f"{where} cannot be read as a NumPy array ({type(exc).__name__}: {exc}); "
            "pass CPU float16/32/64 arrays (cast bfloat16 tensors to float32 first)"
        ) from None
    if array.dtype.kind != "f":
        raise InvalidArgument(f"{where} must hold floating-point values, got dtype {array.dtype}")
    if not np.isfinite(array).all():
        raise InvalidArgument(f"{where} holds non-finite values (NaN or inf)")
    return array


def _check_layout(first: StateDict, state: StateDict, index: int) -> None:
    """The same keys and shapes as updates[0], or InvalidArgument naming the difference."""
    missing = sorted(set(first) - set(state))
    extra = sorted(set(state) - set(first))
    if missing or extra:
        raise InvalidArgument(
            f"updates[{index}] has other keys than updates[0]: missing {missing}, unexpected {extra}"
        )
    for key, array in state.items():
        if array.shape != first[key].shape:
            raise InvalidArgument(
                f"updates[{index}][{key!r}] has shape {tuple(array.shape)}, "
                f"updates[0][{key!r}] has {tuple(first[key].shape)}"
            )


def _out_dtype(dtypes: list[np.dtype]) -> np.dtype:
    """float64 if any device sent float64 for this key, float32 otherwise (float16 included)."""
    return np.dtype(np.float64) if any(d == np.float64 for d in dtypes) else np.dtype(np.float32)
