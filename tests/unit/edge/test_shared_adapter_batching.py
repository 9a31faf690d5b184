"""Two sessions of one shared trunk adapter whose forwards share a batched pass and whose backwards
arrive together: each gets exactly its own gradients (as with batching off), never the sum of both,
and their steps update the one adapter in turn. Plain compute: SessionManager and TrunkBatcher, no
gRPC, a real tiny GPT-2 trunk."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from edge_server.batching import TrunkBatcher
from edge_server.registry import ModelRegistry, ServedModel, load_trunk
from edge_server.session import TrunkSession
from edge_server.sessions import SessionManager
from edge_server.shared_view import SharedAdapterView
from splitft.compress import parse_codecs
from splitft.testing.tiny import lora_config_for, save_tiny_model

KEY = "job-1/r0"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> ServedModel:
    path: Path = save_tiny_model("gpt2", tmp_path_factory.mktemp("shared-gpt2") / "gpt2").path
    return load_trunk("gpt2", path)


def _inputs(seed: int) -> dict[str, torch.Tensor]:
    return {"hidden": torch.randn(2, 6, 32, generator=torch.Generator().manual_seed(seed))}


def _both(run: Callable[[int, TrunkSession], None], sessions: list[TrunkSession]) -> None:
    """`run(i, session)` for both sessions at once (so a batcher can put them in one pass)."""
    start, errors = threading.Barrier(2, timeout=30), []

    def go(i: int) -> None:
        try:
            start.wait()
            with sessions[i].lock:
                run(i, sessions[i])
        except BaseException as exc:  # raised in the test thread below
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors


def _train(batcher: TrunkBatcher | None, served: ServedModel) -> dict[str, object]:
    manager = SessionManager(ModelRegistry({"gpt2": served}), batcher=batcher)
    sessions = [
        manager.open(
            "gpt2",
            device_layers=1,
            head_layers=1,
            codecs=parse_codecs("raw"),
            lora_config=lora_config_for("gpt2"),
            seed=7,
            shared_adapter=KEY,
        )
        for _ in range(2)
    ]
    for session in sessions:  # each alone once, so that the batcher expects both next time
        session.configure_optimizer("SGD", {"lr": 0.5})
        out = session.forward(0, _inputs(9), training=True, requires_grad=True, need_input_grad=True)
        session.backward(0, torch.zeros_like(out), zero_grad_first=True)
    inputs: list[torch.Tensor | None] = [None, None]

    def forward_backward(i: int, session: TrunkSession) -> None:
        out = session.forward(1, _inputs(i), training=True, requires_grad=True, need_input_grad=True)
        inputs[i] = session.backward(1, torch.ones_like(out) * (i + 1), zero_grad_first=True)

    _both(forward_backward, sessions)
    views = [s.optim for s in sessions]
    assert all(isinstance(v, SharedAdapterView) for v in views)
    grads = [[g.clone() for g in v._grads.values()] for v in views]  # type: ignore[union-attr]
    for session in sessions:  # one step each, in turn, of the one adapter
        session.step({}, 0.0, zero_grad_first=False)
    state, steps = sessions[0].export_with_steps()
    manager.stop()
    return {"grads": grads, "inputs": inputs, "state": state, "steps": steps}


def test_sessions_of_one_adapter_in_one_pass_get_their_own_gradients(served: ServedModel) -> None:
    alone = _train(None, served)
    batcher = TrunkBatcher(window_seconds=0.5, parallel_passes=1)
    batched = _train(batcher, served)
    assert batcher.stats.shared_passes == 1 and batcher.stats.shared_forwards == 2  # they shared a pass
    assert batcher.stats.backward_items == 2 and batcher.stats.shared_backwards == 2  # one call each
    for mine, theirs in zip(batched["grads"], alone["grads"], strict=True):  # type: ignore[call-overload]
        assert len(mine) == len(theirs) > 0
        for a, b in zip(mine, theirs, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    first, second = alone["grads"]  # type: ignore[misc]
    flat = [torch.cat([g.flatten() for g in grads]) for grads in (first, second)]
    assert flat[0].abs().sum() > 0 and not torch.allclose(flat[0], flat[1])  # not one sum, twice
    for a, b in zip(batched["inputs"], alone["inputs"], strict=True):  # type: ignore[call-overload]
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert batched["steps"] == alone["steps"] == 2
    for key, value in alone["state"].items():  # type: ignore[union-attr]
        torch.testing.assert_close(batched["state"][key], value, rtol=1e-5, atol=1e-6)  # type: ignore[index]
