"""The `int4` wire codec: blockwise 4-bit symmetric quantization with fp16 scales.

The tensor is flattened and cut into blocks of `BLOCK` consecutive values (the last block padded
with zeros); for an activation [batch, tokens, hidden] with hidden a multiple of `BLOCK`, every
block lies inside one token's row. Each block travels as one fp16 scale s = max|x| / 7 and `BLOCK`
values round(x / s) in [-7, 7], two per byte (low nibble first, stored as value + 8): 18 bytes per
32 values, 0.14 x fp32, with an error of at most s / 2 per value. Small blocks keep one outlier
from coarsening a whole row, which is what per-row int4 would suffer. The payload is all scales
(block order) followed by all packed values.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from splitft.compress.int8 import FP16_MAX

BLOCK = 32
LEVELS = 7  # values in [-7, 7]; the code 0 (i.e. -8) is never sent, so the range is symmetric


def _blocks(shape: tuple[int, ...]) -> int:
    return -(-math.prod(shape) // BLOCK)


def int4_bytes(shape: tuple[int, ...]) -> int:
    blocks = _blocks(shape)
    return blocks * 2 + blocks * BLOCK // 2


def quantize(tensor: torch.Tensor) -> bytes:
    """Payload of `tensor`: round to nearest within each block's scale."""
    n = tensor.numel()
    if n == 0:
        return b""
    blocks = _blocks(tuple(tensor.shape))
    x = tensor.detach().to(device="cpu", dtype=torch.float32).reshape(-1)
    x = F.pad(x, (0, blocks * BLOCK - n)).reshape(blocks, BLOCK)
    scale = (x.abs().amax(dim=1) / LEVELS).clamp(max=FP16_MAX).to(torch.float16)
    divisor = scale.to(torch.float32).clamp(min=torch.finfo(torch.float32).tiny)[:, None]
    codes = (torch.round(x / divisor).clamp(-LEVELS, LEVELS) + 8).to(torch.uint8)
    packed = codes[:, 0::2] | (codes[:, 1::2] << 4)
    return scale.view(torch.uint8).numpy().tobytes() + packed.numpy().tobytes()


def dequantize(data: bytes | bytearray, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Inverse of `quantize`; the caller has checked that `data` has `int4_bytes(shape)` bytes."""
    n = math.prod(shape)
    if n == 0:
        return torch.empty(shape, dtype=dtype)
    blocks = _blocks(shape)
    buffer = bytearray(data) if isinstance(data, bytes) else data
    scale = torch.frombuffer(buffer, dtype=torch.float16, count=blocks).to(torch.float32)
    packed = torch.frombuffer(buffer, dtype=torch.uint8, offset=blocks * 2).reshape(blocks, BLOCK // 2)
    codes = torch.stack((packed & 0x0F, packed >> 4), dim=2).reshape(blocks, BLOCK)
    values = (codes.to(torch.float32) - 8) * scale[:, None]
    return values.reshape(-1)[:n].reshape(shape).to(dtype)
