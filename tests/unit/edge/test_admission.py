"""Memory admission as plain compute: a real tiny GPT-2 trunk, its measured profile, a SessionManager
with a `MemoryAccountant`, no gRPC (tests/system/test_memory_admission.py drives the same over gRPC).

Sessions reserve their estimate at open, atomically with their slot; kept graphs count while they
wait for their backward; optimizer and selection state settle to what was built; closing gives
everything back.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from edge_server.admission import MemoryAccountant
from edge_server.memory import measure_profile
from edge_server.registry import ModelRegistry, ServedModel, load_trunk
from edge_server.session import TrunkSession
from edge_server.sessions import SessionManager
from splitft.compress import parse_codecs
from splitft.errors import ResourceExhausted
from splitft.memory.estimate import MemoryProfile, SessionEstimate, TrunkAdapter, estimate_session
from splitft.methods.taskedge import TaskEdgeConfig
from splitft.methods.wire import method_from_json, method_to_json
from splitft.model.spans import SplitSpec
from splitft.testing.tiny import lora_config_for, save_tiny_model

HIDDEN = 32
SHAPE = (4, 16)  # the sessions' expected batch: rows, tokens


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> ServedModel:
    path = save_tiny_model("gpt2", tmp_path_factory.mktemp("admission") / "gpt2", hidden=HIDDEN).path
    return load_trunk("gpt2", Path(path))


@pytest.fixture(scope="module")
def profile(served: ServedModel) -> MemoryProfile:
    return measure_profile(served.span)


def _estimate(profile: MemoryProfile) -> SessionEstimate:
    """A LoRA session with blocks [1, 3) of 4 (device_layers=1, head_layers=1) at SHAPE."""
    config = lora_config_for("gpt2")
    adapter = TrunkAdapter.lora(config.r, sorted(config.target_modules))
    return estimate_session(profile, blocks=2, adapter=adapter, batch_size=SHAPE[0], sequence_length=SHAPE[1])


def _manager(
    served: ServedModel, profile: MemoryProfile, limit: int, max_sessions: int = 16
) -> SessionManager:
    accountant = MemoryAccountant(limit, {"gpt2": profile})
    return SessionManager(ModelRegistry({"gpt2": served}), max_sessions=max_sessions, memory=accountant)


def _open(manager: SessionManager, session_id: str, *, lora: bool = True, method=None) -> TrunkSession:
    return manager.open(
        "gpt2",
        session_id=session_id,
        device_layers=1,
        head_layers=1,
        codecs=parse_codecs("raw"),
        lora_config=lora_config_for("gpt2") if lora and method is None else None,
        seed=0,
        method=method,
        batch_size=SHAPE[0],
        sequence_length=SHAPE[1],
    )


def _forward(session: TrunkSession, forward_id: int, rows: int = SHAPE[0]) -> None:
    hidden = torch.randn(rows, SHAPE[1], HIDDEN, generator=torch.Generator().manual_seed(forward_id))
    session.forward(forward_id, {"hidden": hidden}, training=True, requires_grad=True, need_input_grad=True)


def test_a_session_that_does_not_fit_is_refused_naming_need_and_free(
    served: ServedModel, profile: MemoryProfile
) -> None:
    need = _estimate(profile).total
    manager = _manager(served, profile, limit=need * 3 // 2)
    first = _open(manager, "first")
    assert manager.memory is not None and manager.memory.used() >= need  # state settled to the built adapter
    free = manager.memory.free()
    with pytest.raises(ResourceExhausted) as refused:
        _open(manager, "second")
    message = refused.value.message
    assert "needs" in message and "free" in message and "--memory-limit" in message
    assert f"{SHAPE[0]} x {SHAPE[1]} batch" in message  # the shape it was estimated at
    assert manager.count() == 1 and manager.memory.free() == free  # nothing half-reserved
    manager.close(first.session_id)
    assert manager.memory.used() == 0
    _open(manager, "second")  # closing gave the room back


def test_concurrent_opens_never_overshoot_the_limit(served: ServedModel, profile: MemoryProfile) -> None:
    need = _estimate(profile).total
    manager = _manager(served, profile, limit=need * 3 + need // 2)  # room for three
    barrier, outcomes = threading.Barrier(8), []

    def open_one(i: int) -> None:
        barrier.wait()
        try:
            _open(manager, f"racer-{i}")
            outcomes.append("opened")
        except ResourceExhausted:
            outcomes.append("refused")

    threads = [threading.Thread(target=open_one, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["opened"] * 3 + ["refused"] * 5
    assert manager.memory is not None and manager.memory.used() <= manager.memory.limit


def test_kept_graphs_count_until_their_backward(served: ServedModel, profile: MemoryProfile) -> None:
    need = _estimate(profile).total
    manager = _manager(served, profile, limit=need * 3)
    session = _open(manager, "graphs")
    accountant = manager.memory
    assert accountant is not None
    admitted = accountant.used()
    _forward(session, 1)  # within its reservation: the footprint does not grow
    assert accountant.kept_bytes("graphs") == session.memory.graph_bytes((*SHAPE, HIDDEN)) > 0
    assert accountant.used() == admitted
    _forward(session, 2)  # two batches pending: beyond the reservation, out of the free memory
    assert accountant.used() == admitted + accountant.kept_bytes("graphs") // 2
    session.backward(1, torch.ones(*SHAPE, HIDDEN), zero_grad_first=True)
    session.backward(2, torch.ones(*SHAPE, HIDDEN), zero_grad_first=False)
    assert accountant.kept_bytes("graphs") == 0 and accountant.used() == admitted


def test_a_forward_beyond_the_free_memory_is_refused_and_the_session_goes_on(
    served: ServedModel, profile: MemoryProfile
) -> None:
    need = _estimate(profile).total
    manager = _manager(served, profile, limit=need + need // 4)
    session = _open(manager, "big-forward")
    with pytest.raises(ResourceExhausted, match=r"a forward of 64 x 16 tokens keeping its graph .* needs"):
        _forward(session, 1, rows=64)
    assert not session._pending and manager.memory is not None
    assert manager.memory.kept_bytes("big-forward") == 0
    _forward(session, 2)  # its own shape still fits
    session.backward(2, torch.ones(*SHAPE, HIDDEN), zero_grad_first=True)


def test_the_optimizer_settles_the_state_and_may_not_outgrow_the_limit(
    served: ServedModel, profile: MemoryProfile
) -> None:
    estimate = _estimate(profile)
    manager = _manager(served, profile, limit=estimate.total)  # no room beyond the AdamW estimate
    session = _open(manager, "optim")
    accountant = manager.memory
    assert accountant is not None
    values = sum(p.numel() * p.element_size() for p in session.trainable)
    assert accountant.used() == values * 4 + estimate.graph_bytes  # AdamW: value, gradient, 2 moments
    session.configure_optimizer("SGD", {"lr": 0.1})
    assert accountant.used() == values * 2 + estimate.graph_bytes
    with pytest.raises(ResourceExhausted, match=r"optimizer state \(Adam\)"):
        session.configure_optimizer("Adam", {"lr": 0.1, "amsgrad": True})  # three slots: over the limit
    assert session.optim.optimizer is not None and type(session.optim.optimizer).__name__ == "SGD"


def test_a_selection_reserves_its_deltas_before_allocating_them(
    served: ServedModel, profile: MemoryProfile
) -> None:
    need = _estimate(profile).total
    manager = _manager(served, profile, limit=need * 4)
    method = method_from_json(method_to_json(TaskEdgeConfig(budget_fraction=0.05)))
    session = _open(manager, "taskedge", method=method)
    accountant = manager.memory
    assert accountant is not None and accountant.used() > 0 and not session.trainable
    session.start_calibration()
    with torch.no_grad():
        _forward(session, 1)
    session.select_parameters(8)
    values = sum(p.numel() * p.element_size() for p in session.trainable)
    indices = sum(b.numel() * b.element_size() for n, b in session.root.named_buffers() if "delta_" in n)
    assert values > 0 and indices > 0
    state, graphs = accountant.state_bytes("taskedge")
    assert state == values * 4 + indices  # what the selection really holds, AdamW assumed
    assert graphs == session.memory.graph_bytes((*SHAPE, HIDDEN))  # one batch; no weight-sized term
    small = _manager(served, profile, limit=accountant.used() - values)  # room for less than that
    other = _open(small, "taskedge-small", method=method)
    other.start_calibration()
    with torch.no_grad():
        _forward(other, 1)
    with pytest.raises(ResourceExhausted, match="the selection"):
        other.select_parameters(8)
    assert not other.trainable and other.selection is not None and not other.selection.selected


def test_a_session_built_outside_a_manager_counts_nothing(served: ServedModel) -> None:
    session = TrunkSession(
        "alone", served.span, SplitSpec(served.num_layers, 1, 1), lora_config_for("gpt2"), 0
    )
    _forward(session, 1, rows=64)  # no accountant: no refusal
    assert session.memory.accountant is None
