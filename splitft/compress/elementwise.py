"""Elementwise codecs: raw, fp16, bf16 (a cast), int8 (per-row quantization, `splitft.compress.int8`) and
int4 (blockwise quantization, `splitft.compress.int4`).

Each value maps to a fixed number of bytes, so the payload size follows from shape and dtype alone
and decoding needs no state. Only floating tensors are ever cast or quantized; integer and bool
tensors (masks, position ids) always travel as their raw bytes whatever the codec says.
"""

from __future__ import annotations

import math

import torch

from splitft.compress import int4, int8
from splitft.compress.spec import CodecSpec

_CAST = {"fp16": torch.float16, "bf16": torch.bfloat16}


def wire_dtype(dtype: torch.dtype, name: str) -> torch.dtype:
    """The dtype a tensor has on the wire under a cast codec (raw for anything not floating)."""
    if name in _CAST and dtype.is_floating_point:
        return _CAST[name]
    return dtype


def raw_bytes(tensor: torch.Tensor) -> bytes:
    """Little-endian bytes of `tensor` as it is (no cast)."""
    wire = tensor.detach().to(device="cpu").contiguous().reshape(-1)  # a 0-dim tensor cannot view as bytes
    return wire.view(torch.uint8).numpy().tobytes() if wire.numel() else b""


def raw_tensor(data: bytes | bytearray, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Inverse of `raw_bytes`; the caller has checked the length."""
    if not data:
        return torch.empty(shape, dtype=dtype)
    buffer = bytearray(data) if isinstance(data, bytes) else data
    return torch.frombuffer(buffer, dtype=dtype).reshape(shape)


def encode(tensor: torch.Tensor, spec: CodecSpec, generator: torch.Generator | None = None) -> bytes:
    """Payload of `tensor`; `generator` drives int8's stochastic rounding."""
    if spec.name == "int8" and tensor.dtype.is_floating_point:
        return int8.quantize(tensor, stochastic=spec.stochastic, generator=generator)
    if spec.name == "int4" and tensor.dtype.is_floating_point:
        return int4.quantize(tensor)
    return raw_bytes(tensor.detach().to(dtype=wire_dtype(tensor.dtype, spec.name)))


def decode(
    data: bytes | bytearray, shape: tuple[int, ...], dtype: torch.dtype, spec: CodecSpec
) -> torch.Tensor:
    """Inverse of `encode`; the caller has checked that `data` has `payload_bytes` bytes."""
    if spec.name == "int8" and dtype.is_floating_point:
        return int8.dequantize(data, shape, dtype)
    if spec.name == "int4" and dtype.is_floating_point:
        return int4.dequantize(data, shape, dtype)
    return raw_tensor(data, shape, wire_dtype(dtype, spec.name)).to(dtype)


def payload_bytes(shape: tuple[int, ...], dtype: torch.dtype, spec: CodecSpec) -> int:
    if spec.name == "int8" and dtype.is_floating_point:
        return int8.int8_bytes(shape)
    if spec.name == "int4" and dtype.is_floating_point:
        return int4.int4_bytes(shape)
    itemsize = torch.empty((), dtype=wire_dtype(dtype, spec.name)).element_size()
    return math.prod(shape) * itemsize
