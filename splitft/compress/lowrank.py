"""The `lowrank:<r>` gradient codec: PowerSGD (Vogels et al., 2019), one power iteration per step.

A gradient of shape [..., d] is viewed as a matrix M of [prod(shape[:-1]), d] (tokens x hidden).
The encoder computes P = M Q, orthonormalises P (reduced QR), then Q = M^T P, and sends P and Q;
the receiver decodes P Q^T. Q is kept between steps (warm start): one power iteration per step then
acts like subspace iteration across steps, so the basis tracks the gradient's top-r subspace at the
cost of a single iteration. Q's shape [d, r] does not depend on the token count, so it survives
batches of different sizes. The first Q is Gaussian from the session's seeded generator.

The rank is clamped to min(rows, cols). Payload: P [rows, r] then Q [cols, r], both bf16
little-endian, 2 r (rows + cols) bytes (0.006x fp32 for [1024, 512] at r = 4): bf16 keeps fp32's
range, so Q = M^T P, which carries the gradient's own scale, cannot underflow as it could in fp16,
and its rounding (2^-9 relative per entry) is far below what the rank truncation drops. The encoder
keeps its fp32 Q for the warm start; error feedback (off by default for lowrank, `:ef` turns it on:
see `feedback`) records the decoded (rounded) tensor, so what the rounding loses is carried too.
Decoding needs no state and checks the payload size.
"""

from __future__ import annotations

import logging
import math

import torch

from splitft.errors import InvalidArgument

logger = logging.getLogger(__name__)


def matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """(rows, cols) of a tensor viewed as rows of its last dimension (a scalar is 1 x 1)."""
    if len(shape) == 0:
        return 1, 1
    return math.prod(shape[:-1]), shape[-1]


def effective_rank(shape: tuple[int, ...], rank: int) -> int:
    rows, cols = matrix_shape(shape)
    return min(rank, rows, cols)


FACTOR_DTYPE = torch.bfloat16
FACTOR_BYTES = 2


def payload_bytes(shape: tuple[int, ...], rank: int) -> int:
    rows, cols = matrix_shape(shape)
    return FACTOR_BYTES * effective_rank(shape, rank) * (rows + cols)


class PowerSGD:
    """Stateful encoder for one tensor stream: keeps the warm-start Q between calls."""

    def __init__(self, rank: int, generator: torch.Generator) -> None:
        self.rank = rank
        self.generator = generator  # CPU generator; only the first Q (and re-inits) draw from it
        self.q: torch.Tensor | None = None

    def encode(self, tensor: torch.Tensor) -> bytes:
        shape = tuple(tensor.shape)
        r = effective_rank(shape, self.rank)
        if r == 0:
            return b""
        m = tensor.detach().to(torch.float32).reshape(matrix_shape(shape))
        p, _ = torch.linalg.qr(m @ self._start(m.shape[1], r, m.device))
        q = m.T @ p
        # A non-finite gradient would poison every later step through the warm start.
        self.q = q if bool(torch.isfinite(q).all()) else None
        return _to_bytes(p) + _to_bytes(q)

    def _start(self, cols: int, r: int, device: torch.device) -> torch.Tensor:
        if self.q is not None and self.q.shape == (cols, r):
            return self.q.to(device)
        if self.q is not None:
            logger.debug(
                "lowrank: basis %s no longer fits [%d, %d]; drawing a new one", self.q.shape, cols, r
            )
        return torch.randn((cols, r), generator=self.generator).to(device)


def _to_bytes(matrix: torch.Tensor) -> bytes:
    wire = matrix.to(device="cpu", dtype=FACTOR_DTYPE).contiguous().reshape(-1)  # stride 1, even for r = 1
    return wire.view(torch.uint8).numpy().tobytes()  # numpy has no bf16: its bytes as uint8


def decode(data: bytes | bytearray, shape: tuple[int, ...], dtype: torch.dtype, rank: int) -> torch.Tensor:
    """P Q^T reshaped to `shape`; the payload size must match shape and rank exactly."""
    want = payload_bytes(shape, rank)
    if len(data) != want:
        raise InvalidArgument(f"lowrank payload: {len(data)} bytes, expected {want} for shape {list(shape)}")
    rows, cols = matrix_shape(shape)
    r = effective_rank(shape, rank)
    if r == 0:
        return torch.zeros(shape, dtype=dtype)
    buffer = bytearray(data) if isinstance(data, bytes) else data
    p = torch.frombuffer(buffer, dtype=FACTOR_DTYPE, count=rows * r).reshape(rows, r)
    q = torch.frombuffer(buffer, dtype=FACTOR_DTYPE, count=cols * r, offset=FACTOR_BYTES * rows * r)
    return (p.to(torch.float32) @ q.reshape(cols, r).to(torch.float32).T).reshape(shape).to(dtype)
