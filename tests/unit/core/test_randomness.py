"""Per-session randomness: generators per thread and per row range, never the global RNG."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from splitft.model.randomness import RowStream, RowStreams, SessionRandomness, has_dropout, seeded


def test_dropout_draws_from_the_session_generator_not_the_global_rng():
    x = torch.ones(3, 5, 7)
    with SessionRandomness(RowStreams.single(seeded(1))):
        first = F.dropout(x, 0.5, True)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    with SessionRandomness(RowStreams.single(seeded(1))):
        again = F.dropout(x, 0.5, True)
    assert torch.equal(first, again)  # same seed, same mask
    assert torch.equal(torch.get_rng_state(), before)  # the global RNG was not touched
    assert set(first.unique().tolist()) == {0.0, 2.0}  # scaled by 1 / (1 - p)


def test_row_ranges_draw_the_masks_each_session_draws_alone():
    x = torch.ones(5, 4, 6)
    streams = RowStreams([RowStream(0, 2, seeded(7)), RowStream(2, 5, seeded(8))])
    with SessionRandomness(streams):
        batched = nn.Dropout(0.3)(x)
    with SessionRandomness(RowStreams.single(seeded(7))):
        first = F.dropout(x[:2], 0.3, True)
    with SessionRandomness(RowStreams.single(seeded(8))):
        second = F.dropout(x[2:], 0.3, True)
    assert torch.equal(batched, torch.cat([first, second]))


def test_a_tensor_that_is_not_batch_first_is_refused_in_a_shared_batch():
    streams = RowStreams([RowStream(0, 2, seeded(1)), RowStream(2, 4, seeded(2))])
    with SessionRandomness(streams), pytest.raises(RuntimeError, match="batch-first"):
        F.dropout(torch.ones(3, 4), 0.5, True)


def test_only_narrows_to_one_generator():
    mode = SessionRandomness(RowStreams([RowStream(0, 2, seeded(1)), RowStream(2, 4, seeded(2))]))
    with mode, mode.only(seeded(9)):
        inner = F.dropout(torch.ones(3, 8), 0.5, True)  # three rows: fine, one generator
    with SessionRandomness(RowStreams.single(seeded(9))):
        alone = F.dropout(torch.ones(3, 8), 0.5, True)
    assert torch.equal(inner, alone)


def test_the_mode_is_thread_local():
    """Another thread's dropout is untouched (it draws from the global RNG as usual)."""
    seen: list[torch.Tensor] = []
    ready, done = threading.Event(), threading.Event()

    def other() -> None:
        ready.wait()
        torch.manual_seed(5)
        seen.append(F.dropout(torch.ones(64), 0.5, True))
        done.set()

    thread = threading.Thread(target=other)
    thread.start()
    with SessionRandomness(RowStreams.single(seeded(1))):
        ready.set()
        done.wait(10)
    thread.join()
    torch.manual_seed(5)
    assert torch.equal(seen[0], F.dropout(torch.ones(64), 0.5, True))


def test_initialisation_draws_from_the_session_generator():
    with SessionRandomness(RowStreams.single(seeded(3))):
        a = nn.Linear(8, 4).weight.detach().clone()
    with SessionRandomness(RowStreams.single(seeded(3))):
        b = nn.Linear(8, 4).weight.detach().clone()
    assert torch.equal(a, b)
    with (
        SessionRandomness(RowStreams.single(seeded(3))),
        pytest.raises(RuntimeError, match="session generator"),
    ):
        torch.rand_like(a)


def test_attention_dropout_is_the_reference_formula_with_session_masks():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4, generator=g) for _ in range(3))
    mask = torch.ones(5, 5, dtype=torch.bool).tril()
    with SessionRandomness(RowStreams.single(seeded(4))):
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.25)
    scores = (q @ k.transpose(-2, -1) / 2.0).masked_fill(~mask, float("-inf")).softmax(-1)
    keep = torch.empty_like(scores).bernoulli_(0.75, generator=seeded(4))
    assert torch.allclose(out, (scores * keep / 0.75) @ v, atol=1e-6)
    # Without dropout the fused kernel runs, untouched.
    with SessionRandomness(RowStreams.single(seeded(4))):
        plain = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.allclose(plain, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))


def test_has_dropout_sees_modules_and_attention_rates():
    assert not has_dropout(nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.0)))
    assert has_dropout(nn.Sequential(nn.Dropout(0.1)))
    layer = nn.Linear(2, 2)
    layer.attention_dropout = 0.1  # as Llama's attention keeps its rate
    assert has_dropout(nn.Sequential(layer))
