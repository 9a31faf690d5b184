"""TrunkSession and SessionManager as plain compute: no gRPC, a real tiny GPT-2 trunk from disk.

The trunk's forward and backward must equal the same blocks run in an independently loaded
Hugging Face model; the session keeps no wire state (that is `SessionWire`, next to it in the
manager).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import GPT2LMHeadModel

from edge_server.registry import ModelRegistry, ServedModel, load_trunk
from edge_server.session import TrunkSession
from edge_server.session_wire import GRAD, HIDDEN, SessionWire
from edge_server.sessions import SessionManager
from splitft.compress import parse_codecs
from splitft.errors import FailedPrecondition, InvalidArgument, NotFound
from splitft.model.spans import SplitSpec
from splitft.testing.tiny import lora_config_for, save_tiny_model

HIDDEN_SIZE = 32
LAYERS = 4


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model("gpt2", tmp_path_factory.mktemp("unit-gpt2") / "gpt2").path


@pytest.fixture(scope="module")
def served(model_dir: Path) -> ServedModel:
    return load_trunk("gpt2", model_dir)


def _session(served: ServedModel, *, lora: bool = False, seed: int = 0) -> TrunkSession:
    spec = SplitSpec(served.num_layers, device_layers=1, head_layers=1)  # trunk = blocks [1, 3)
    config = lora_config_for("gpt2") if lora else None
    return TrunkSession("unit", served.span, spec, config, seed)


def _inputs(batch: int = 2, tokens: int = 5, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, tokens, dtype=torch.long)
    mask[0, -2:] = 0
    return {"hidden": torch.randn(batch, tokens, HIDDEN_SIZE, generator=generator), "attention_mask": mask}


def _reference(model_dir: Path, served: ServedModel, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Blocks [1, 3) of the whole model, loaded by Hugging Face itself (not through the edge's view)."""
    whole = GPT2LMHeadModel.from_pretrained(str(model_dir)).eval()
    return served.span.family.run_trunk(whole, inputs["hidden"], inputs["attention_mask"], None, 1, 3)


def test_forward_and_backward_equal_the_same_blocks_run_locally(model_dir: Path, served: ServedModel) -> None:
    session = _session(served)
    inputs = _inputs()
    out = session.forward(7, dict(inputs), training=False, requires_grad=True, need_input_grad=True)
    local_in = inputs["hidden"].detach().clone().requires_grad_(True)
    expected = _reference(model_dir, served, {**inputs, "hidden": local_in})
    torch.testing.assert_close(out, expected.detach(), rtol=0, atol=0)
    grad = torch.randn_like(out)
    grad_in = session.backward(7, grad, zero_grad_first=False)
    expected.backward(grad)
    assert grad_in is not None
    torch.testing.assert_close(grad_in, local_in.grad, rtol=1e-6, atol=1e-7)


def test_a_forward_without_backward_keeps_no_graph(served: ServedModel) -> None:
    session = _session(served)
    out = session.forward(1, _inputs(), training=False, requires_grad=False, need_input_grad=False)
    assert not out.requires_grad
    with pytest.raises(NotFound, match="no kept forward 1"):
        session.backward(1, torch.zeros_like(out), zero_grad_first=False)


def test_a_misshapen_gradient_does_not_cost_the_kept_forward(served: ServedModel) -> None:
    session = _session(served)
    out = session.forward(3, _inputs(), training=False, requires_grad=True, need_input_grad=True)
    with pytest.raises(InvalidArgument, match="grad shape"):
        session.backward(3, torch.zeros(1, 1, HIDDEN_SIZE), zero_grad_first=False)
    with pytest.raises(InvalidArgument, match="grad dtype"):
        session.backward(3, torch.zeros_like(out, dtype=torch.float64), zero_grad_first=False)
    assert session.backward(3, torch.ones_like(out), zero_grad_first=False) is not None
    with pytest.raises(NotFound):  # used up
        session.backward(3, torch.ones_like(out), zero_grad_first=False)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"hidden": torch.zeros(1, 2, HIDDEN_SIZE), "labels": torch.zeros(1)}, "unexpected forward tensors"),
        ({"attention_mask": torch.ones(1, 2)}, "needs a 'hidden'"),
        ({"hidden": torch.zeros(1, 2, HIDDEN_SIZE + 1)}, "hidden must have shape"),
        ({"hidden": torch.zeros(1, 2, HIDDEN_SIZE, dtype=torch.float64)}, "hidden must be float32, bfloat16"),
        ({"hidden": torch.zeros(1, 2, HIDDEN_SIZE), "attention_mask": torch.ones(1, 2)}, "integer or bool"),
        ({"hidden": torch.zeros(1, 2, HIDDEN_SIZE), "position_ids": torch.ones(1, 3).long()}, "position_ids"),
    ],
)
def test_bad_forward_inputs_are_refused_precisely(
    served: ServedModel, inputs: dict[str, torch.Tensor], message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        _session(served).forward(1, inputs, training=False, requires_grad=False, need_input_grad=False)


def test_a_lora_session_trains_its_adapter_and_leaves_the_shared_trunk_alone(served: ServedModel) -> None:
    shared = {k: v.clone() for k, v in served.span.root.state_dict().items()}
    session = _session(served, lora=True)
    assert session.trainable_parameters > 0
    with pytest.raises(FailedPrecondition, match="step before ConfigureOptimizer"):
        session.step({}, 1.0, zero_grad_first=False)
    session.configure_optimizer("SGD", {"lr": 0.5})
    before = session.export_adapter()
    out = session.forward(1, _inputs(), training=True, requires_grad=True, need_input_grad=False)
    assert session.backward(1, torch.ones_like(out), zero_grad_first=False) is None  # not asked for
    assert session.grad_norm_sq(zero_grad_first=False) > 0
    assert session.step({"lr": 0.25}, 1.0, zero_grad_first=False) == 1 == session.steps
    after = session.export_adapter()
    assert after.keys() == before.keys() and any(not torch.equal(after[k], before[k]) for k in after)
    for key, value in served.span.root.state_dict().items():
        assert torch.equal(value, shared[key]), key
    session.release()
    assert session.trainable == [] and session.trainable_parameters == 0


def test_a_frozen_session_counts_steps_and_ignores_optimizers(served: ServedModel) -> None:
    session = _session(served)
    session.configure_optimizer("AdamW", {"lr": 1e-3})
    assert session.optim.optimizer is None
    assert session.step({}, 1.0, zero_grad_first=True) == 1
    with pytest.raises(InvalidArgument, match="not supported on the edge"):
        session.configure_optimizer("LBFGS", {})


def test_the_session_holds_no_wire_state(served: ServedModel) -> None:
    session = _session(served)
    assert not hasattr(session, "encoders") and not hasattr(session, "codec")


# --- SessionManager: the wire state lives next to the session --------------------------------------


@pytest.fixture
def manager(served: ServedModel) -> Iterator[SessionManager]:
    sessions = SessionManager(ModelRegistry({"gpt2": served}), ttl_seconds=60.0, max_sessions=2)
    yield sessions
    sessions.stop()


def _open(manager: SessionManager, session_id: str, codec: str = "int8") -> TrunkSession:
    return manager.open(
        "gpt2",
        session_id=session_id,
        device_layers=1,
        head_layers=1,
        codecs=parse_codecs(codec),
        lora_config=None,
        seed=3,
    )


def test_the_manager_keeps_each_sessions_parsed_codecs_and_encoders(manager: SessionManager) -> None:
    _open(manager, "a", "activations=int8,gradients=topk:0.1")
    wire = manager.wire("a")
    assert wire.codecs == parse_codecs("activations=int8,gradients=topk:0.1")
    assert wire.label == "activations=int8,gradients=topk"
    assert str(wire.encoders[HIDDEN].spec) == "int8" and str(wire.encoders[GRAD].spec) == "topk:0.1"


def test_closing_or_expiring_a_session_drops_its_wire_state(manager: SessionManager) -> None:
    _open(manager, "a")
    _open(manager, "b")
    manager.close("a")
    with pytest.raises(NotFound):
        manager.wire("a")
    manager.ttl_seconds = 0.0
    assert manager.expire_idle() == ["b"]
    with pytest.raises(NotFound):
        manager.wire("b")
    manager.ttl_seconds = 60.0
    _open(manager, "c")
    assert manager.close_where(lambda s: s.session_id == "c") == ["c"]
    with pytest.raises(NotFound):
        manager.wire("c")
    assert manager.count() == 0


def test_wire_encoders_are_seeded_per_direction_from_the_session() -> None:
    codecs = parse_codecs("int8:sr")
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
    first, again, other = (SessionWire.open(codecs, seed) for seed in (5, 5, 6))
    encode = [w.encoders[HIDDEN].encode(x) for w in (first, again, other)]
    assert encode[0] == encode[1]  # same seed, same stochastic rounding
    assert encode[0] != encode[2]


def test_only_sessions_the_ttl_expired_are_handed_to_on_expired(manager: SessionManager) -> None:
    told: list[list[str]] = []
    manager.on_expired = told.append
    _open(manager, "a")
    _open(manager, "b")
    manager.close("a")  # closed on request: not a silent device
    assert manager.expire_idle() == [] and told == []  # nothing idle: nobody is told
    manager.ttl_seconds = 0.0
    assert manager.expire_idle() == ["b"] and told == [["b"]]
    manager.ttl_seconds = 60.0
