"""The `int8` wire codec: per-row (per token) symmetric quantization with fp16 scales.

A floating tensor of shape [..., d] is viewed as rows of d values (one row per token for an
activation). Each row travels as one fp16 scale s = max|x| / 127 and d int8 values round(x / s):
about a quarter of fp32's bytes (d + 2 per row instead of 4d), with an error of at most s / 2 per
value. The payload is all scales (row order) followed by all values.

Stochastic rounding (for gradients) rounds x / s up with probability equal to its fractional part,
so E[decoded] == x exactly and errors average out over steps instead of accumulating as a bias.
For that the scale is rounded *up* to the next fp16 value, so |x| / s <= 127 holds and clamping
never bites (a row whose scale underflows fp16 still gets the smallest positive one). The error is
then below s per value. The payload format is the same, so `dequantize` does not care which.
"""

from __future__ import annotations

import math

import torch

FP16_MAX = 65504.0


def _rows(shape: tuple[int, ...]) -> tuple[int, int]:
    """(rows, row length) of a tensor viewed as rows of its last dimension."""
    if len(shape) == 0:
        return 1, 1
    return math.prod(shape[:-1]), shape[-1]


def int8_bytes(shape: tuple[int, ...]) -> int:
    rows, width = _rows(shape)
    return 0 if rows * width == 0 else rows * 2 + rows * width


def quantize(
    tensor: torch.Tensor, *, stochastic: bool = False, generator: torch.Generator | None = None
) -> bytes:
    """Payload of `tensor`: round to nearest, or stochastic (unbiased) rounding from `generator`."""
    rows, width = _rows(tuple(tensor.shape))
    if rows * width == 0:
        return b""
    x = tensor.detach().to(device="cpu", dtype=torch.float32).reshape(rows, width)
    exact = (x.abs().amax(dim=1) / 127.0).clamp(max=FP16_MAX)
    scale = _round_up_fp16(exact) if stochastic else exact.to(torch.float16)
    divisor = scale.to(torch.float32).clamp(min=torch.finfo(torch.float32).tiny)[:, None]
    if stochastic:
        noise = torch.rand(x.shape, generator=generator, dtype=torch.float32)
        values = torch.floor(x / divisor + noise).clamp(-127, 127).to(torch.int8)
    else:
        values = torch.round(x / divisor).clamp(-127, 127).to(torch.int8)
    return scale.view(torch.uint8).numpy().tobytes() + values.view(torch.uint8).numpy().tobytes()


def _round_up_fp16(exact: torch.Tensor) -> torch.Tensor:
    """The smallest fp16 >= each (non-negative, at most FP16_MAX) value; positive where `exact` is."""
    nearest = exact.to(torch.float16)
    below = nearest.to(torch.float32) < exact
    # For non-negative finite fp16, the next value up is the next bit pattern.
    return (nearest.view(torch.int16) + below.to(torch.int16)).view(torch.float16)


def dequantize(data: bytes | bytearray, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    rows, width = _rows(shape)
    if rows * width == 0:
        return torch.empty(shape, dtype=dtype)
    buffer = bytearray(data) if isinstance(data, bytes) else data
    scale = torch.frombuffer(buffer, dtype=torch.float16, count=rows).to(torch.float32)
    values = (
        torch.frombuffer(buffer, dtype=torch.int8, offset=rows * 2).to(torch.float32).reshape(rows, width)
    )
    return (values * scale[:, None]).reshape(shape).to(dtype)
