"""Error feedback accumulates exactly what was dropped: sum(sent) + residual == sum(inputs)."""

from __future__ import annotations

import logging

import pytest
import torch

from splitft.compress.encoder import TensorEncoder, decode_payload
from splitft.compress.feedback import ErrorFeedback
from splitft.compress.spec import parse_codec


def _grads(steps: int, *shape: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    return [torch.randn(*shape, generator=gen) for _ in range(steps)]


def test_feedback_by_hand() -> None:
    feedback = ErrorFeedback()
    g = torch.tensor([1.0, -2.0, 0.5])
    c = feedback.compensate(g)
    assert torch.equal(c, g) and c is not g
    feedback.record(c, torch.tensor([0.0, -2.0, 0.0]))  # a top-1 "decoder"
    assert torch.equal(feedback.residual, torch.tensor([1.0, 0.0, 0.5]))
    assert torch.equal(feedback.compensate(g), torch.tensor([2.0, -2.0, 1.0]))


@pytest.mark.parametrize("codec", ["topk:0.05", "topk:0.3", "lowrank:1:ef", "lowrank:3:ef"])
def test_sent_plus_residual_equals_sum_of_inputs(codec: str) -> None:
    encoder = TensorEncoder(codec, seed=0)
    grads = _grads(12, 4, 6, 16)
    sent = torch.zeros(4, 6, 16)
    for g in grads:
        name, payload = encoder.encode(g, key="grad")
        sent += decode_payload(name, payload, tuple(g.shape), g.dtype)
    residual = encoder.residual("grad")
    assert residual is not None
    total = torch.stack(grads).sum(0)
    assert torch.allclose(sent + residual, total, atol=1e-5)
    assert not torch.allclose(sent, total, atol=1e-2)  # something really was held back


def test_error_feedback_beats_no_feedback_on_the_sum() -> None:
    grads = _grads(20, 32, 32)
    total = torch.stack(grads).sum(0)
    errors = {}
    for codec in ("topk:0.1", "topk:0.1:noef"):
        encoder = TensorEncoder(codec)
        sent = sum(decode_payload(*encoder.encode(g), (32, 32), torch.float32) for g in grads)
        errors[codec] = float((sent - total).norm() / total.norm())
    assert errors["topk:0.1"] < errors["topk:0.1:noef"] / 2


@pytest.mark.parametrize(
    ("codec", "feedback"),
    [("topk:0.05", True), ("topk:0.05:noef", False), ("lowrank:2", False), ("lowrank:2:ef", True)],
)
def test_error_feedback_is_on_by_default_only_for_topk(codec: str, feedback: bool) -> None:
    """The defaults follow `bench converge`: error feedback helped top-k and hurt low rank."""
    encoder = TensorEncoder(codec, seed=0)
    for g in _grads(2, 4, 6, 16):
        encoder.encode(g, key="grad")
    assert (encoder.residual("grad") is not None) == feedback
    assert parse_codec(codec).error_feedback is feedback


def test_residual_is_per_position_and_dropped_on_a_new_shape(caplog: pytest.LogCaptureFixture) -> None:
    feedback = ErrorFeedback()
    feedback.record(feedback.compensate(torch.ones(2, 3)), torch.zeros(2, 3))
    with caplog.at_level(logging.DEBUG, logger="splitft.compress.feedback"):
        out = feedback.compensate(torch.ones(4, 3))
    assert torch.equal(out, torch.ones(4, 3)) and feedback.residual is None
    assert "residual dropped" in caplog.text


def test_low_precision_gradients_keep_an_fp32_residual() -> None:
    feedback = ErrorFeedback()
    c = feedback.compensate(torch.ones(3, dtype=torch.bfloat16))
    assert c.dtype == torch.float32
    feedback.record(c, torch.tensor([1.0, 0.0, 1.0], dtype=torch.bfloat16))
    assert feedback.residual is not None and feedback.residual.dtype == torch.float32
    small = torch.full((3,), 1e-3, dtype=torch.bfloat16)
    assert feedback.compensate(small)[1] == pytest.approx(1.001, abs=1e-5)
