"""topk: exactly the largest entries survive, k is agreed on both sides, bad payloads are refused."""

from __future__ import annotations

import pytest
import torch

from splitft.compress import topk
from splitft.errors import InvalidArgument


def _distinct(*shape: int) -> torch.Tensor:
    """Entries with distinct magnitudes and random signs, so the top k is unambiguous."""
    gen = torch.Generator().manual_seed(0)
    n = torch.Size(shape).numel()
    magnitudes = (torch.randperm(n, generator=gen) + 1).to(torch.float32) / n
    signs = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    return (magnitudes * signs).reshape(shape)


def test_keeps_exactly_the_top_entries_and_zeros_the_rest() -> None:
    x = _distinct(4, 5, 10)  # 200 entries; 0.1 -> 20
    out = topk.decode(topk.encode(x, 0.1), (4, 5, 10), torch.float32, 0.1)
    kept = out != 0
    assert int(kept.sum()) == 20
    threshold = x.abs().flatten().kthvalue(200 - 20).values
    assert torch.equal(kept, x.abs() > threshold)
    assert torch.equal(out[kept], x[kept])  # fp32 values: exact


@pytest.mark.parametrize(
    ("numel", "fraction", "k"),
    [(100, 0.07, 7), (100, 0.01, 1), (1000, 1e-4, 1), (10, 1.0, 10), (3, 0.5, 2), (0, 0.5, 0), (1, 1e-3, 1)],
)
def test_count_is_max_1_ceil_fraction_numel_without_float_fuzz(numel: int, fraction: float, k: int) -> None:
    assert topk.topk_count(numel, fraction) == k


def test_payload_is_ascending_int32_indices_then_fp32_values() -> None:
    x = torch.tensor([0.1, -5.0, 0.2, 3.0, -0.3])
    data = topk.encode(x, 0.4)
    assert len(data) == topk.payload_bytes((5,), 0.4) == 16
    assert torch.frombuffer(bytearray(data[:8]), dtype=torch.int32).tolist() == [1, 3]
    assert torch.frombuffer(bytearray(data[8:]), dtype=torch.float32).tolist() == [-5.0, 3.0]


def test_decodes_to_the_requested_dtype_and_handles_scalars_and_empty() -> None:
    x = _distinct(8, 16).to(torch.float16)
    out = topk.decode(topk.encode(x, 0.5), (8, 16), torch.float16, 0.5)
    assert out.dtype == torch.float16 and int((out != 0).sum()) == 64
    scalar = torch.tensor(2.5)
    assert topk.decode(topk.encode(scalar, 0.01), (), torch.float32, 0.01) == scalar
    assert topk.encode(torch.empty(0, 3), 0.5) == b""
    assert topk.decode(b"", (0, 3), torch.float32, 0.5).shape == (0, 3)


def _payload(indices: list[int], values: list[float]) -> bytes:
    return (
        torch.tensor(indices, dtype=torch.int32).numpy().tobytes()
        + torch.tensor(values, dtype=torch.float32).numpy().tobytes()
    )


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "0 bytes, expected 16"),
        (_payload([0], [1.0]), "8 bytes, expected 16"),
        (_payload([0, 1, 2], [1.0, 2.0, 3.0]), "24 bytes, expected 16"),
        (_payload([0, 1], [1.0, 2.0])[:-1], "15 bytes"),
        (_payload([0, 10], [1.0, 2.0]), r"out of range \[0, 10\)"),
        (_payload([-1, 3], [1.0, 2.0]), "out of range"),
        (_payload([3, 3], [1.0, 2.0]), "not strictly ascending"),
        (_payload([4, 2], [1.0, 2.0]), "not strictly ascending"),
        (b"\xff" * 16, "out of range"),
    ],
    ids=["empty", "short", "long", "odd", "past-end", "negative", "duplicate", "descending", "garbage"],
)
def test_bad_payloads_are_invalid_argument(data: bytes, match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        topk.decode(data, (2, 5), torch.float32, 0.2)


def test_bytes_at_one_percent_are_a_fiftieth_of_fp32() -> None:
    x = torch.randn(8, 128, 512)  # 524288 entries: k = ceil(5242.88) = 5243, 8 bytes each
    assert len(topk.encode(x, 0.01)) == 5243 * 8 <= 0.02 * x.numel() * 4 + topk.ENTRY_BYTES
