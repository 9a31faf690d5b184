"""The int8 codec: per-row scales, bounded error, a quarter of the bytes, and training still works."""

from __future__ import annotations

import pytest
import torch

from device_client import SplitModel
from splitft.compress import int8
from splitft.testing.tiny import lora_config_for, make_batch
from splitft.wire import codec


def test_int8_round_trip_error_is_at_most_half_a_step_per_row():
    x = torch.randn(4, 7, 64) * torch.linspace(0.01, 100, 7)[None, :, None]  # rows of very different scale
    parts = list(codec.tensor_parts("hidden", x, "int8"))
    y = codec.parts_to_tensors(parts)["hidden"]
    assert y.dtype == x.dtype and y.shape == x.shape
    step = x.abs().amax(dim=-1, keepdim=True) / 127
    assert bool(((y - x).abs() <= step / 2 * 1.01 + 1e-6).all())  # fp16 scales: 1% slack


def test_int8_bytes_are_about_a_quarter_of_fp32_and_zero_rows_survive():
    x = torch.randn(8, 128, 256)
    x[0] = 0.0
    payload = codec.encode(x, "int8")
    assert len(payload) == 8 * 128 * (256 + 2) == codec.expected_bytes(tuple(x.shape), x.dtype, "int8")
    assert len(payload) / codec.expected_bytes(tuple(x.shape), x.dtype, "raw") < 0.26
    assert torch.equal(codec.decode(payload, tuple(x.shape), x.dtype, "int8")[0], torch.zeros(128, 256))


def test_int8_leaves_integer_tensors_raw_and_handles_empty():
    ids = torch.arange(12).reshape(3, 4)
    assert torch.equal(codec.parts_to_tensors(codec.tensor_parts("ids", ids, "int8"))["ids"], ids)
    empty = torch.empty(0, 5)
    assert codec.parts_to_tensors(codec.tensor_parts("e", empty, "int8"))["e"].shape == (0, 5)


def _scales(payload: bytes, rows: int) -> torch.Tensor:
    return torch.frombuffer(bytearray(payload), dtype=torch.float16, count=rows).to(torch.float32)[:, None]


def test_stochastic_rounding_is_unbiased_with_error_below_one_step():
    gen = torch.Generator().manual_seed(0)
    # rows from 1e-9 (scale underflows fp16: rounded up to the smallest subnormal) to 1e3
    x = torch.randn(5, 64, generator=gen) * torch.tensor([1e-9, 1e-5, 1e-2, 1.0, 1e3])[:, None]
    draws = 1000
    total, worst = torch.zeros_like(x), torch.zeros_like(x)
    for _ in range(draws):
        payload = int8.quantize(x, stochastic=True, generator=gen)
        y = int8.dequantize(payload, (5, 64), torch.float32)
        total += y
        worst = torch.maximum(worst, (y - x).abs())
    scale = _scales(payload, 5)
    assert bool((scale > 0).all())
    assert bool((worst < scale).all())
    # per value the rounding error has std <= scale / 2, so its mean over 1000 draws <= ~0.016 scale
    assert bool(((total / draws - x).abs() <= 0.08 * scale).all())


def test_stochastic_scale_is_rounded_up_so_nothing_clips():
    x = torch.tensor([[0.0, 1.0, -1.0001], [3.3333, 0.1, 0.0]])
    payload = int8.quantize(x, stochastic=True, generator=torch.Generator().manual_seed(0))
    scale = _scales(payload, 2)
    assert bool((x.abs().amax(dim=1, keepdim=True) / scale <= 127).all())
    assert len(payload) == int8.int8_bytes((2, 3))  # same format: dequantize does not know the difference


def test_round_to_nearest_is_unchanged_and_deterministic():
    x = torch.randn(3, 16)
    assert int8.quantize(x) == int8.quantize(x, stochastic=False, generator=torch.Generator())
    gen = torch.Generator().manual_seed(1)
    assert int8.quantize(x, stochastic=True, generator=gen) != int8.quantize(x)


def _train(path, conn, family: str, codec_name: str) -> list[float]:
    torch.manual_seed(0)
    model = SplitModel.from_pretrained(
        path,
        edge=conn,
        model=family,
        device_layers=1,
        head_layers=1,
        lora_config=lora_config_for(family),
        codec=codec_name,
    )
    opt = model.configure_optimizer(torch.optim.AdamW, lr=1e-2)
    batch = make_batch(family, torch.Generator().manual_seed(1))
    losses = []
    for _ in range(8):
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    model.close()
    return losses


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_split_training_over_int8_tracks_raw(family, tiny_models, conn):
    raw = _train(tiny_models[family].path, conn, family, "raw")
    quantized = _train(tiny_models[family].path, conn, family, "int8")
    assert quantized[-1] < quantized[0]
    assert quantized[-1] == pytest.approx(raw[-1], rel=0.05)  # measured: within 1% on these models
