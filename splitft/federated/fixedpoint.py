"""Adapters as fixed-point vectors in Z/2^64, the arithmetic secure aggregation masks in.

Masks cancel exactly only in exact arithmetic, so each device turns its weighted update into
integers first: entry x of the state dict, weighted by the device's example count w, becomes
round(w * x * 2^FRACTION_BITS) as a two's-complement int64 read as uint64, and every sum is taken
modulo 2^64 (NumPy's uint64 arithmetic wraps). The sum of the devices' integers, read back as int64,
is sum_k round(w_k x_k 2^F): divided by 2^F and by W = sum_k w_k it is FedAvg, up to the rounding.

* **Scale**: 2^-24 (FRACTION_BITS = 24), about 6e-8.
* **Error**: each device's rounding is at most 2^-25 per entry, so the decoded mean is off FedAvg by
  at most K * 2^-25 / W <= 2^-25 (3e-8) per entry, since every weight is >= 1 and so W >= K.
* **Overflow bound**: the sum must stay in int64, |sum_k w_k x_k| * 2^24 < 2^63. Each of K devices
  refuses to encode an entry with |w x| >= 2^(63-24) / K = 2^39 / K (5.5e11 / K; with K = 1000
  devices and 1000 examples each, |x| up to 549): then no sum can wrap, whatever the others send.

The layout (names, shapes, dtypes, in sorted name order) travels in the clear: it is the adapter's
structure, which the job spec fixes anyway; only the values are masked.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from splitft.errors import FailedPrecondition, InvalidArgument

FRACTION_BITS = 24
SCALE = float(2**FRACTION_BITS)
MAX_ENTRIES = 1 << 31  # a layout larger than this is refused (16 GiB of uint64)
MAX_TENSORS = 100_000
DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class Layout:
    """The flat vector's structure: (name, shape, dtype) per tensor, in sorted name order."""

    entries: tuple[tuple[str, tuple[int, ...], str], ...]

    @property
    def size(self) -> int:
        """Entries in the flat vector."""
        return sum(math.prod(shape) for _, shape, _ in self.entries)

    @classmethod
    def of_state(cls, state: Mapping[str, Any]) -> Layout:
        """The layout of a state dict of float32/float64 arrays."""
        entries = []
        for name in sorted(state):
            array = np.asarray(state[name])
            if array.dtype.name not in DTYPES:
                raise InvalidArgument(f"tensor {name!r} is {array.dtype}; secure aggregation takes {DTYPES}")
            entries.append((name, tuple(int(n) for n in array.shape), array.dtype.name))
        return cls.from_json([[n, list(s), d] for n, s, d in entries])

    def to_json(self) -> list[list[Any]]:
        return [[name, list(shape), dtype] for name, shape, dtype in self.entries]

    @classmethod
    def from_json(cls, raw: Any) -> Layout:
        """A layout from its JSON form; InvalidArgument naming the entry at fault."""
        if not isinstance(raw, list) or not 0 < len(raw) <= MAX_TENSORS:
            raise InvalidArgument(f"layout must be a list of 1 to {MAX_TENSORS} [name, shape, dtype] entries")
        entries, size, names = [], 0, []
        for index, item in enumerate(raw):
            name, shape, dtype = _entry(item, index)
            entries.append((name, shape, dtype))
            names.append(name)
            size += math.prod(shape)
        if names != sorted(set(names)):
            raise InvalidArgument("layout names must be unique and in sorted order")
        if size == 0 or size > MAX_ENTRIES:
            raise InvalidArgument(f"layout holds {size} entries; between 1 and {MAX_ENTRIES} are accepted")
        return cls(tuple(entries))


def _entry(item: Any, index: int) -> tuple[str, tuple[int, ...], str]:
    if not (isinstance(item, (list, tuple)) and len(item) == 3):
        raise InvalidArgument(f"layout[{index}] must be [name, shape, dtype]")
    name, shape, dtype = item
    if not isinstance(name, str) or not 0 < len(name) <= 512:
        raise InvalidArgument(f"layout[{index}] name must be a string of 1 to 512 characters")
    if not isinstance(shape, (list, tuple)) or len(shape) > 8:
        raise InvalidArgument(f"layout[{index}] ({name}) shape must be a list of at most 8 sizes")
    if not all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= MAX_ENTRIES for n in shape):
        raise InvalidArgument(
            f"layout[{index}] ({name}) shape {shape!r} must hold sizes in [0, {MAX_ENTRIES}]"
        )
    if dtype not in DTYPES:
        raise InvalidArgument(f"layout[{index}] ({name}) dtype must be one of {DTYPES}, got {dtype!r}")
    return name, tuple(shape), dtype


def flatten(state: Mapping[str, Any], layout: Layout) -> np.ndarray:
    """The state dict as one float64 vector in the layout's order (shapes checked)."""
    if sorted(state) != [name for name, _, _ in layout.entries]:
        raise InvalidArgument("the state dict's tensors differ from the layout's")
    parts = []
    for name, shape, _ in layout.entries:
        array = np.asarray(state[name], dtype=np.float64)
        if array.shape != shape:
            raise InvalidArgument(f"tensor {name!r} has shape {array.shape}, the layout says {shape}")
        parts.append(array.reshape(-1))
    return np.concatenate(parts)


def unflatten(vector: np.ndarray, layout: Layout) -> dict[str, np.ndarray]:
    """The state dict of a flat vector, each tensor in its layout dtype."""
    if vector.shape != (layout.size,):
        raise InvalidArgument(f"vector has shape {vector.shape}; the layout holds {layout.size} entries")
    state, offset = {}, 0
    for name, shape, dtype in layout.entries:
        count = math.prod(shape)
        state[name] = vector[offset : offset + count].reshape(shape).astype(dtype)
        offset += count
    return state


def max_weighted_entry(members: int) -> float:
    """The largest |w x| a device may encode when `members` devices add up (the overflow bound)."""
    return 2.0 ** (63 - FRACTION_BITS) / max(members, 1)


def encode(values: np.ndarray, weight: int, members: int) -> np.ndarray:
    """round(weight * values * 2^F) in Z/2^64 (uint64); refused past the overflow bound or non-finite."""
    if isinstance(weight, bool) or not isinstance(weight, (int, np.integer)) or not 1 <= weight < 2**31:
        raise InvalidArgument(f"weight must be an integer in [1, 2^31), got {weight!r}")
    weighted = np.asarray(values, dtype=np.float64) * float(weight)
    if not np.all(np.isfinite(weighted)):
        raise FailedPrecondition("the update holds a non-finite value: it cannot be aggregated")
    bound = max_weighted_entry(members)
    largest = float(np.max(np.abs(weighted))) if weighted.size else 0.0
    if largest >= bound:
        raise FailedPrecondition(
            f"a weighted entry of {largest:.3g} passes the fixed-point bound {bound:.3g} "
            f"(2^{63 - FRACTION_BITS} / {members} devices): the sum could wrap around"
        )
    return np.rint(weighted * SCALE).astype(np.int64).view(np.uint64)


def add(vectors: Sequence[np.ndarray]) -> np.ndarray:
    """The sum of uint64 vectors modulo 2^64."""
    total = np.zeros_like(vectors[0], dtype=np.uint64)
    for vector in vectors:
        np.add(total, vector, out=total)  # uint64 wraps around: arithmetic modulo 2^64
    return total


def decode_sum(total: np.ndarray, total_weight: int) -> np.ndarray:
    """The weighted mean from the sum of the devices' encodings: int64 / 2^F / W, in float64."""
    if total_weight < 1:
        raise InvalidArgument(f"the total weight must be >= 1, got {total_weight}")
    return total.astype(np.uint64).view(np.int64).astype(np.float64) / SCALE / float(total_weight)
