"""The int8 codec: per-row scales, bounded error, a quarter of the bytes, and training still works."""

from __future__ import annotations

import pytest
import torch

from device_client import SplitModel
from splitft import codec
from splitft.tiny import lora_config_for, make_batch


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
