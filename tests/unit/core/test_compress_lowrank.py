"""lowrank (PowerSGD): exact on low-rank matrices up to bf16 rounding, warm start converges, error
falls with rank."""

from __future__ import annotations

import pytest
import torch

from splitft.compress import lowrank
from splitft.errors import InvalidArgument


def _decaying(rows: int = 256, cols: int = 64, rank: int = 8, seed: int = 0) -> torch.Tensor:
    """A rank-`rank` matrix with singular values 1 .. 1e-3 (a clear spectrum to track)."""
    gen = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(rows, rank, generator=gen))
    v, _ = torch.linalg.qr(torch.randn(cols, rank, generator=gen))
    return (u * torch.logspace(0, -3, rank)) @ v.T


def _round_trip(encoder: lowrank.PowerSGD, m: torch.Tensor) -> torch.Tensor:
    return lowrank.decode(encoder.encode(m), tuple(m.shape), m.dtype, encoder.rank)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


BF16 = 1e-2  # P and Q travel as bf16 (2^-9 relative per entry): "exact" means within this


def _encoder(rank: int, seed: int = 0) -> lowrank.PowerSGD:
    return lowrank.PowerSGD(rank, torch.Generator().manual_seed(seed))


def test_exactly_rank_r_is_reproduced() -> None:
    m = _decaying(rank=4).reshape(4, 64, 64)  # [..., d] is viewed as [256, 64]
    encoder = _encoder(4)
    for _ in range(3):
        out = _round_trip(encoder, m)
    assert out.shape == m.shape and _rel(out, m) < BF16


def test_warm_start_converges_to_the_best_rank_r_error() -> None:
    m = _decaying(rank=8)
    best = float(torch.linalg.svdvals(m)[4:].norm() / m.norm())  # truncated SVD at rank 4
    warm = _encoder(4)
    errors = [_rel(_round_trip(warm, m), m) for _ in range(6)]
    assert errors[0] > 2 * best and errors[-1] == pytest.approx(best, rel=0.05)
    assert all(later <= earlier * 1.01 for earlier, later in zip(errors[:-1], errors[1:], strict=True))
    # Without the kept Q every call starts from the same random basis and never improves.
    cold = [_rel(_round_trip(_encoder(4), m), m) for _ in range(2)]
    assert cold[0] == cold[1] == errors[0]


def test_warm_start_survives_a_change_in_token_count() -> None:
    m = _decaying(rows=256, cols=64, rank=4)
    encoder = _encoder(4)
    _round_trip(encoder, m)
    q = encoder.q
    assert q is not None and q.shape == (64, 4)
    out = _round_trip(encoder, m[:100])  # fewer tokens, same hidden size: Q still fits
    assert _rel(out, m[:100]) < BF16


def test_error_decreases_with_rank() -> None:
    m = _decaying(rank=16)
    errors = []
    for rank in (1, 2, 4, 8, 16):
        encoder = _encoder(rank)
        for _ in range(4):
            out = _round_trip(encoder, m)
        errors.append(_rel(out, m))
    assert errors == sorted(errors, reverse=True) and errors[-1] < BF16


def test_rank_is_clamped_and_payload_is_p_then_q_bf16() -> None:
    assert lowrank.payload_bytes((8, 128, 512), 4) == 2 * 4 * (1024 + 512)
    assert lowrank.effective_rank((3, 512), 8) == 3 and lowrank.effective_rank((), 4) == 1
    m = torch.randn(3, 5)
    assert _rel(_round_trip(_encoder(8), m), m) < BF16  # rank 3 = full rank
    p_then_q = _encoder(8).encode(m)
    p = torch.frombuffer(bytearray(p_then_q), dtype=torch.bfloat16, count=3 * 3).reshape(3, 3).float()
    assert torch.allclose(p.T @ p, torch.eye(3), atol=BF16)  # P first, orthonormal


def test_empty_and_zero_tensors() -> None:
    assert _encoder(2).encode(torch.empty(0, 8)) == b""
    assert lowrank.decode(b"", (0, 8), torch.float32, 2).shape == (0, 8)
    zeros = torch.zeros(6, 4)
    assert torch.equal(_round_trip(_encoder(2), zeros), zeros)


def test_non_finite_gradient_does_not_poison_the_warm_start() -> None:
    encoder = _encoder(2)
    encoder.encode(torch.full((6, 4), float("nan")))
    assert encoder.q is None
    m = _decaying(rows=6, cols=4, rank=2)
    assert _rel(_round_trip(encoder, m), m) < BF16


def test_seeded_first_basis_is_reproducible() -> None:
    m = _decaying(rank=8)
    assert _encoder(2, seed=7).encode(m) == _encoder(2, seed=7).encode(m)
    assert _encoder(2, seed=7).encode(m) != _encoder(2, seed=8).encode(m)


@pytest.mark.parametrize("size", [0, 1, 2 * 2 * (6 + 4) - 1, 2 * 2 * (6 + 4) + 1, 2 * 3 * (6 + 4)])
def test_payload_size_is_validated(size: int) -> None:
    with pytest.raises(InvalidArgument, match="expected 40"):
        lowrank.decode(b"\0" * size, (6, 4), torch.float32, 2)
