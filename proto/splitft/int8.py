"""The `int8` wire codec: per-row (per token) symmetric quantization with fp16 scales.

A floating tensor of shape [..., d] is viewed as rows of d values (one row per token for an
activation). Each row travels as one fp16 scale s = max|x| / 127 and d int8 values round(x / s):
about a quarter of fp32's bytes (d + 2 per row instead of 4d), with an error of at most s / 2 per
value. The payload is all scales (row order) followed by all values.
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


def quantize(tensor: torch.Tensor) -> bytes:
    rows, width = _rows(tuple(tensor.shape))
    if rows * width == 0:
        return b""
    x = tensor.detach().to(device="cpu", dtype=torch.float32).reshape(rows, width)
    scale = (x.abs().amax(dim=1) / 127.0).clamp(max=FP16_MAX).to(torch.float16)
    divisor = scale.to(torch.float32).clamp(min=torch.finfo(torch.float32).tiny)[:, None]
    values = torch.round(x / divisor).clamp(-127, 127).to(torch.int8)
    return scale.view(torch.uint8).numpy().tobytes() + values.view(torch.uint8).numpy().tobytes()


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
