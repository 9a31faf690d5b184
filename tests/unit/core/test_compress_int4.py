"""The int4 codec: blockwise scales, bounded error, packing, sizes, and bad payloads refused."""

from __future__ import annotations

import pytest
import torch

from splitft.compress import int4, parse_codec
from splitft.compress.encoder import TensorEncoder, decode_payload, payload_bytes
from splitft.errors import InvalidArgument


def _scales(x: torch.Tensor) -> torch.Tensor:
    """Each value's block scale, as the encoder computes it (fp16 of max|x| / 7)."""
    n = x.numel()
    flat = torch.nn.functional.pad(x.reshape(-1), (0, -n % int4.BLOCK)).reshape(-1, int4.BLOCK)
    scale = (flat.abs().amax(dim=1) / 7).to(torch.float16).to(torch.float32)
    return scale[:, None].expand(-1, int4.BLOCK).reshape(-1)[:n].reshape(x.shape)


@pytest.mark.parametrize("shape", [(4, 3, 64), (3, 7), (1,), (5, 33)])
def test_round_trip_error_is_at_most_half_a_step_per_block(shape):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen) * 10 ** torch.randint(-3, 3, shape, generator=gen).float()
    y = int4.dequantize(int4.quantize(x), shape, torch.float32)
    assert y.shape == x.shape
    assert bool(((y - x).abs() <= _scales(x) / 2 * 1.01 + 1e-7).all())  # fp16 scales: 1% slack


def test_an_outlier_coarsens_only_its_own_block():
    x = torch.randn(2, 64) * 0.01
    x[0, 5] = 100.0  # block 0 of row 0
    y = int4.dequantize(int4.quantize(x), (2, 64), torch.float32)
    own_half_step = x[0, 32:].abs().max() / 7 / 2
    assert (y[0, 32:] - x[0, 32:]).abs().max() <= own_half_step * 1.01  # same row, next block: as fine
    assert torch.equal(y[0, :32].abs() > 0, torch.arange(32) == 5)  # its own block's small values: gone
    assert y[0, 5] == pytest.approx(100.0, rel=1e-3)  # the outlier itself is one exact step


def test_sizes_packing_and_exact_values():
    assert int4.int4_bytes((8, 128, 512)) == 8 * 128 * 512 // 32 * 18  # 0.14 x fp32
    assert int4.int4_bytes((3, 7)) == 18  # 21 values: one padded block
    assert int4.int4_bytes((0, 5)) == 0
    # Multiples of the scale survive exactly: a block with max 7 has scale 1.
    x = torch.arange(-7, 25, dtype=torch.float32).clamp(max=7)
    assert torch.equal(int4.dequantize(int4.quantize(x), (32,), torch.float32), x)
    payload = int4.quantize(torch.zeros(40))
    assert len(payload) == int4.int4_bytes((40,)) and torch.equal(
        int4.dequantize(payload, (40,), torch.float32), torch.zeros(40)
    )


def test_through_the_encoder_it_is_stateless_and_sized_like_its_spec():
    spec = parse_codec("int4")
    assert not spec.is_stateful and str(spec) == "int4"
    x = torch.randn(2, 5, 64, dtype=torch.bfloat16)
    codec, payload = TensorEncoder(spec).encode(x, "h")
    assert codec == "int4" and len(payload) == payload_bytes(spec, (2, 5, 64), torch.bfloat16)
    y = decode_payload(codec, payload, (2, 5, 64), torch.bfloat16)
    assert y.dtype == torch.bfloat16 and (y.float() - x.float()).abs().max() < 0.5
    ids = torch.arange(6).reshape(2, 3)  # integer tensors always travel raw
    codec, payload = TensorEncoder(spec).encode(ids, "ids")
    assert codec == "raw" and torch.equal(decode_payload(codec, payload, (2, 3), torch.int64), ids)


@pytest.mark.parametrize("delta", [-1, 1, 100])
def test_a_payload_of_the_wrong_size_is_invalid(delta):
    payload = int4.quantize(torch.randn(3, 40))
    bad = payload[:delta] if delta < 0 else payload + b"\0" * delta
    with pytest.raises(InvalidArgument, match="expected 72"):
        decode_payload("int4", bad, (3, 40), torch.float32)


@pytest.mark.parametrize("text", ["int4:sr", "int4:2", "int3"])
def test_int4_takes_no_options(text):
    with pytest.raises(InvalidArgument):
        parse_codec(text)
