"""The edge's TrunkOptimizer as plain compute: it steps exactly as the torch optimizer it names."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edge_server.trunk_optim import OPTIMIZERS, TrunkOptimizer
from splitft.errors import FailedPrecondition, InvalidArgument
from splitft.wire.serde import EDGE_OPTIMIZERS


def _params(seed: int = 0) -> list[nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    return [
        nn.Parameter(torch.randn(3, 4, generator=generator)),
        nn.Parameter(torch.randn(4, generator=generator)),
    ]


def _set_grads(params: list[nn.Parameter], seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator)


def test_the_edge_runs_exactly_the_shared_optimizer_names() -> None:
    assert tuple(OPTIMIZERS) == EDGE_OPTIMIZERS
    assert all(cls is getattr(torch.optim, name) for name, cls in OPTIMIZERS.items())


@pytest.mark.parametrize("name", EDGE_OPTIMIZERS)
def test_steps_equal_the_torch_optimizer_with_the_same_schedule(name: str) -> None:
    mine, theirs = _params(), _params()
    trunk = TrunkOptimizer(mine)
    trunk.configure(name, {"lr": 0.1, "weight_decay": 0.01})
    reference = getattr(torch.optim, name)(theirs, lr=0.1, weight_decay=0.01)
    for step, lr in enumerate((0.1, 0.05, 0.02), start=1):
        _set_grads(mine, step)
        _set_grads(theirs, step)
        for group in reference.param_groups:
            group["lr"] = lr
        reference.step()
        assert trunk.step({"lr": lr}, 1.0, zero_grad_first=False) == step
    for a, b in zip(mine, theirs, strict=True):
        assert torch.equal(a, b)


def test_grad_scale_and_grad_norm_match_clipping_by_hand() -> None:
    mine, theirs = _params(), _params()
    trunk = TrunkOptimizer(mine)
    trunk.configure("SGD", {"lr": 1.0})
    _set_grads(mine, 1)
    _set_grads(theirs, 1)
    expected = sum(float(p.grad.pow(2).sum()) for p in theirs)
    assert trunk.grad_norm_sq(zero_grad_first=False) == pytest.approx(expected, rel=1e-6)
    trunk.step({}, 0.5, zero_grad_first=False)
    with torch.no_grad():
        for p in theirs:
            p -= 0.5 * p.grad
    for a, b in zip(mine, theirs, strict=True):
        torch.testing.assert_close(a, b)


def test_zero_grad_first_drops_the_gradients_before_measuring() -> None:
    params = _params()
    trunk = TrunkOptimizer(params)
    _set_grads(params, 2)
    assert trunk.grad_norm_sq(zero_grad_first=True) == 0.0
    assert all(p.grad is None for p in params)


def test_refusals_are_precise_and_leave_the_optimizer_usable() -> None:
    params = _params()
    trunk = TrunkOptimizer(params)
    with pytest.raises(FailedPrecondition, match="step before ConfigureOptimizer"):
        trunk.step({}, 1.0, zero_grad_first=False)
    with pytest.raises(InvalidArgument, match="'LBFGS' is not supported on the edge"):
        trunk.configure("LBFGS", {})
    with pytest.raises(InvalidArgument, match="invalid SGD hyper-parameters"):
        trunk.configure("SGD", {"lr": -1})
    trunk.configure("AdamW", {"lr": 0.1})
    _set_grads(params, 3)
    for hparams, message in (
        ({"betas": [0.1]}, "does not fit"),
        ({"lr": True}, "does not fit"),
        ({"nope": 1}, "unknown optimizer hyper-parameter 'nope'"),
        ({"params": 1}, "unknown optimizer hyper-parameter 'params'"),
    ):
        with pytest.raises(InvalidArgument, match=message):
            trunk.step(hparams, 1.0, zero_grad_first=False)
    for scale in (float("nan"), -1.0):
        with pytest.raises(InvalidArgument, match="grad_scale"):
            trunk.step({}, scale, zero_grad_first=False)
    assert trunk.optimizer is not None and trunk.optimizer.param_groups[0]["betas"] == (0.9, 0.999)
    assert trunk.step({"betas": [0.8, 0.99]}, 1.0, zero_grad_first=False) == 1
    assert trunk.optimizer.param_groups[0]["betas"] == (0.8, 0.99)


def test_nothing_to_train_counts_steps_without_an_optimizer() -> None:
    trunk = TrunkOptimizer([])
    trunk.configure("AdamW", {"lr": 0.1})
    assert trunk.optimizer is None
    assert [trunk.step({}, 1.0, zero_grad_first=True) for _ in range(2)] == [1, 2]


def test_release_drops_state() -> None:
    trunk = TrunkOptimizer(_params())
    trunk.configure("Adam", {})
    trunk.release()
    assert trunk.optimizer is None and trunk.params == []
