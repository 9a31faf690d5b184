"""The `topk:<fraction>` gradient codec: send only the largest-magnitude entries.

k = max(1, ceil(fraction * numel)) entries survive (0 for an empty tensor); everything else decodes
as zero. With error feedback (`splitft.compress.feedback`) the dropped mass is carried into the next
step, so nothing is lost for good, only delayed.

Payload: k int32 flat indices (C order, strictly ascending) then k fp32 values, little-endian, 8k
bytes. Values stay fp32 on purpose: gradients can be far below fp16's range (or, with loss scaling,
above it), and 8 bytes per kept entry is still 0.02x fp32 at topk:0.01. Ascending indices make the
payload canonical and let the decoder reject duplicates and out-of-range indices cheaply.
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch

from splitft.errors import InvalidArgument

ENTRY_BYTES = 8  # int32 index + fp32 value
MAX_NUMEL = 2**31 - 1  # int32 indices


def topk_count(numel: int, fraction: float) -> int:
    """How many entries travel; exact decimal arithmetic so both sides agree on k."""
    if numel == 0:
        return 0
    # repr(fraction) is the codec string's own text, so 0.07 * 100 is exactly 7 (not 7.000000000000001)
    return max(1, math.ceil(Fraction(repr(fraction)) * numel))


def payload_bytes(shape: tuple[int, ...], fraction: float) -> int:
    return ENTRY_BYTES * topk_count(math.prod(shape), fraction)


def encode(tensor: torch.Tensor, fraction: float) -> bytes:
    """Indices and values of the k largest |entries| of `tensor` (any device, any float dtype)."""
    flat = tensor.detach().reshape(-1).to(torch.float32)
    if flat.numel() > MAX_NUMEL:
        raise InvalidArgument(f"topk: {flat.numel()} entries do not fit int32 indices")
    k = topk_count(flat.numel(), fraction)
    if k == 0:
        return b""
    indices = torch.sort(torch.topk(flat.abs(), k, sorted=False).indices).values
    values = flat[indices]
    wire_indices = indices.to(device="cpu", dtype=torch.int32)
    wire_values = values.to(device="cpu")
    return wire_indices.numpy().tobytes() + wire_values.numpy().tobytes()


def decode(
    data: bytes | bytearray, shape: tuple[int, ...], dtype: torch.dtype, fraction: float
) -> torch.Tensor:
    """Dense tensor of `shape` with the sent entries and zeros elsewhere; validates everything."""
    numel = math.prod(shape)
    k = topk_count(numel, fraction)
    if len(data) != ENTRY_BYTES * k:
        raise InvalidArgument(
            f"topk payload: {len(data)} bytes, expected {ENTRY_BYTES * k} for shape {list(shape)}"
        )
    dense = torch.zeros(numel, dtype=torch.float32)
    if k:
        buffer = bytearray(data) if isinstance(data, bytes) else data
        indices = torch.frombuffer(buffer, dtype=torch.int32, count=k).to(torch.int64)
        values = torch.frombuffer(buffer, dtype=torch.float32, count=k, offset=4 * k)
        _check_indices(indices, numel)
        dense[indices] = values
    return dense.reshape(shape).to(dtype)


def _check_indices(indices: torch.Tensor, numel: int) -> None:
    if int(indices[0]) < 0 or int(indices[-1]) >= numel:
        raise InvalidArgument(f"topk payload: index out of range [0, {numel})")
    if indices.numel() > 1 and not bool((indices[1:] > indices[:-1]).all()):
        raise InvalidArgument("topk payload: indices are not strictly ascending")
