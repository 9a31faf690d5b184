"""Bad input gets a precise gRPC status (or SDK exception) and never stops the edge from serving."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch
from grpc import StatusCode as Code
from transformers import T5Config

from device_client import EdgeConnection, SplitModel
from edge_server import EdgeServer
from splitft.errors import InvalidArgument, NotFound, UnsupportedModel
from splitft.model.lora import trunk_lora_json
from splitft.testing.tiny import FAMILY_NAMES, TinyModel, lora_config_for, make_batch
from splitft.v1 import dataplane_pb2 as pb
from splitft.v1.dataplane_pb2_grpc import DataPlaneStub
from splitft.wire.codec import tensors_to_parts
from tests.support.split import split_llama

HIDDEN = 32  # hidden size of every tiny model
LLAMA_LORA = json.loads(trunk_lora_json(lora_config_for("llama")))
MISSING = "0" * 32  # a session id no edge ever hands out


@pytest.fixture(scope="module")
def stub(edge: EdgeServer) -> Iterator[DataPlaneStub]:
    with grpc.insecure_channel(edge.address) as channel:
        yield DataPlaneStub(channel)


def _code(call: Callable[[], Any]) -> Code:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


def _open_request(**overrides: Any) -> pb.OpenSessionRequest:
    fields: dict[str, Any] = dict(
        model="llama",
        device_layers=1,
        head_layers=1,
        codec="raw",
        trunk_lora=True,
        lora_config_json=json.dumps(LLAMA_LORA),
        seed=1,
        model_type="llama",
        num_layers=4,
        hidden_size=HIDDEN,
    )
    fields.update(overrides)
    return pb.OpenSessionRequest(**fields)


@contextmanager
def _opened(stub: DataPlaneStub, **overrides: Any) -> Iterator[str]:
    session_id = stub.OpenSession(_open_request(**overrides)).session_id
    try:
        yield session_id
    finally:
        # close so the shared edge does not fill up with sessions over the whole test run
        stub.CloseSession(pb.CloseSessionRequest(session_id=session_id))


@pytest.fixture
def session(stub: DataPlaneStub) -> Iterator[str]:
    with _opened(stub) as session_id:
        yield session_id


def _forward_messages(
    session_id: str, tensors: dict[str, torch.Tensor], *, forward_id: int = 1, requires_grad: bool = False
) -> list[pb.ForwardRequest]:
    header = pb.ForwardHeader(
        session_id=session_id,
        forward_id=forward_id,
        training=True,
        requires_grad=requires_grad,
        need_input_grad=requires_grad,
    )
    parts = [pb.ForwardRequest(part=p) for p in tensors_to_parts(tensors, "raw")]
    return [pb.ForwardRequest(header=header), *parts]


def _forward(stub: DataPlaneStub, session_id: str, tensors: dict[str, torch.Tensor], **header: Any) -> list:
    return list(stub.Forward(iter(_forward_messages(session_id, tensors, **header))))


def _backward(stub: DataPlaneStub, session_id: str, forward_id: int, grad: torch.Tensor) -> list:
    messages = [pb.BackwardRequest(header=pb.BackwardHeader(session_id=session_id, forward_id=forward_id))]
    messages += [pb.BackwardRequest(part=p) for p in tensors_to_parts({"grad": grad}, "raw")]
    return list(stub.Backward(iter(messages)))


def _hidden(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0)).to(dtype)


# --- unknown names -------------------------------------------------------------------------------

UNKNOWN_SESSION_CALLS: dict[str, Callable[[DataPlaneStub], Any]] = {
    "Forward": lambda s: _forward(s, MISSING, {"hidden": _hidden(1, 3, HIDDEN)}),
    "Backward": lambda s: _backward(s, MISSING, 1, _hidden(1, 3, HIDDEN)),
    "Step": lambda s: s.Step(pb.StepRequest(session_id=MISSING)),
    "GradNorm": lambda s: s.GradNorm(pb.GradNormRequest(session_id=MISSING)),
    "ExportAdapter": lambda s: list(s.ExportAdapter(pb.ExportAdapterRequest(session_id=MISSING))),
    "CloseSession": lambda s: s.CloseSession(pb.CloseSessionRequest(session_id=MISSING)),
    "LoadAdapter": lambda s: s.LoadAdapter(
        iter([pb.LoadAdapterRequest(header=pb.LoadAdapterHeader(session_id=MISSING))])
    ),
    "ConfigureOptimizer": lambda s: s.ConfigureOptimizer(
        pb.ConfigureOptimizerRequest(session_id=MISSING, name="AdamW")
    ),
    "ExportSessionState": lambda s: list(
        s.ExportSessionState(pb.ExportSessionStateRequest(session_id=MISSING))
    ),
    "ImportSessionState": lambda s: s.ImportSessionState(
        iter([pb.ImportSessionStateRequest(header=pb.ImportSessionStateHeader(session_id=MISSING))])
    ),
}


@pytest.mark.parametrize("method", sorted(UNKNOWN_SESSION_CALLS))
def test_unknown_session_is_not_found(stub: DataPlaneStub, method: str) -> None:
    assert _code(lambda: UNKNOWN_SESSION_CALLS[method](stub)) == Code.NOT_FOUND


def test_unknown_model_is_not_found(stub: DataPlaneStub) -> None:
    assert _code(lambda: stub.OpenSession(_open_request(model="no-such-model"))) == Code.NOT_FOUND


# --- OpenSession ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("device_layers", "head_layers"), [(0, 1), (0, 0), (2, 2), (3, 1), (4, 0), (1, 3)])
def test_split_without_device_blocks_or_trunk_is_invalid(
    stub: DataPlaneStub, device_layers: int, head_layers: int
) -> None:
    request = _open_request(device_layers=device_layers, head_layers=head_layers)
    assert _code(lambda: stub.OpenSession(request)) == Code.INVALID_ARGUMENT


@pytest.mark.parametrize(
    "codec",
    [
        "int3",
        "topk:0.01",  # gradient-only codecs cannot carry activations
        "activations=lowrank:4,gradients=raw",
        "activations=int8,gradients=topk:0",
        "activations=int8,gradients=topk:1.5",
        "activations=int8,gradients=lowrank:0",
        "activations=int8,gradients=lowrank:x",
        "activations=int8,weights=raw",
        "activations=int8,activations=raw",
        "fp16:sr",
        "raw:noef",
        "x" * 1000,
    ],
)
def test_bad_codec_is_invalid(stub: DataPlaneStub, codec: str) -> None:
    assert _code(lambda: stub.OpenSession(_open_request(codec=codec))) == Code.INVALID_ARGUMENT


BAD_LORA = {
    "not-json": "{r: 4",
    "not-an-object": "[4]",
    "unknown-field": json.dumps({**LLAMA_LORA, "modules_to_save": ["lm_head"]}),
    "bias-all": json.dumps({**LLAMA_LORA, "bias": "all"}),
    "init-pissa": json.dumps({**LLAMA_LORA, "init_lora_weights": "pissa"}),
    "rank-0": json.dumps({**LLAMA_LORA, "r": 0}),
    "no-such-target": json.dumps({**LLAMA_LORA, "target_modules": ["no_such_proj"]}),
    # peft does not type-check these; they used to surface as INTERNAL
    "rank-pattern-str": json.dumps({**LLAMA_LORA, "rank_pattern": "x"}),
    "bad-target-regex": json.dumps({**LLAMA_LORA, "target_modules": "("}),
}


@pytest.mark.parametrize("case", sorted(BAD_LORA))
def test_bad_lora_config_is_invalid(stub: DataPlaneStub, case: str) -> None:
    request = _open_request(lora_config_json=BAD_LORA[case])
    assert _code(lambda: stub.OpenSession(request)) == Code.INVALID_ARGUMENT


@pytest.mark.parametrize("mismatch", [dict(model_type="gpt2"), dict(num_layers=5), dict(hidden_size=64)])
def test_device_model_mismatch_is_failed_precondition(stub: DataPlaneStub, mismatch: dict[str, Any]) -> None:
    assert _code(lambda: stub.OpenSession(_open_request(**mismatch))) == Code.FAILED_PRECONDITION


# --- Forward -------------------------------------------------------------------------------------

BAD_FORWARD_TENSORS: dict[str, dict[str, torch.Tensor]] = {
    "wrong-hidden-size": {"hidden": _hidden(2, 5, HIDDEN // 2)},
    "float64": {"hidden": _hidden(2, 5, HIDDEN, dtype=torch.float64)},
    "2-d": {"hidden": _hidden(5, HIDDEN)},
    "no-hidden": {"attention_mask": torch.ones(2, 5, dtype=torch.long)},
    "token-ids": {"hidden": _hidden(2, 5, HIDDEN), "input_ids": torch.ones(2, 5, dtype=torch.long)},
    "float-mask": {"hidden": _hidden(2, 5, HIDDEN), "attention_mask": torch.ones(2, 5)},
    "mask-shape": {"hidden": _hidden(2, 5, HIDDEN), "attention_mask": torch.ones(3, 5, dtype=torch.long)},
}


@pytest.mark.parametrize("case", sorted(BAD_FORWARD_TENSORS))
def test_forward_with_bad_tensors_is_invalid(stub: DataPlaneStub, session: str, case: str) -> None:
    assert _code(lambda: _forward(stub, session, BAD_FORWARD_TENSORS[case])) == Code.INVALID_ARGUMENT


def _raw_header(session_id: str, tensor: pb.Tensor) -> list[pb.ForwardRequest]:
    return [
        pb.ForwardRequest(header=pb.ForwardHeader(session_id=session_id, forward_id=1)),
        pb.ForwardRequest(part=pb.TensorPart(tensor=tensor)),
    ]


def test_forward_with_truncated_bytes_is_invalid(stub: DataPlaneStub, session: str) -> None:
    need = 2 * 5 * HIDDEN * 4
    tensor = pb.Tensor(
        name="hidden",
        shape=[2, 5, HIDDEN],
        dtype="float32",
        codec="raw",
        total_bytes=need,
        data=b"\0" * (need - 4),
    )
    assert _code(lambda: list(stub.Forward(iter(_raw_header(session, tensor))))) == Code.INVALID_ARGUMENT


def test_forward_declaring_absurd_size_is_resource_exhausted(stub: DataPlaneStub, session: str) -> None:
    # A consistent header (shape x itemsize == total_bytes == 1 TiB): the request is well-formed but
    # over the edge's per-tensor limit, so it is a capacity refusal, made before any byte is buffered.
    tensor = pb.Tensor(
        name="hidden", shape=[1, 1 << 33, HIDDEN], dtype="float32", codec="raw", total_bytes=1 << 40, data=b""
    )
    assert _code(lambda: list(stub.Forward(iter(_raw_header(session, tensor))))) == Code.RESOURCE_EXHAUSTED


def test_forward_stream_must_start_with_header(stub: DataPlaneStub, session: str) -> None:
    messages = _forward_messages(session, {"hidden": _hidden(1, 3, HIDDEN)})
    assert _code(lambda: list(stub.Forward(iter(messages[1:])))) == Code.INVALID_ARGUMENT
    assert _code(lambda: list(stub.Forward(iter([])))) == Code.INVALID_ARGUMENT
    assert _code(lambda: list(stub.Forward(iter(messages + messages[:1])))) == Code.INVALID_ARGUMENT


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_one_row_mask_applies_to_every_row(stub: DataPlaneStub, family: str) -> None:
    # The edge accepts a [1, tokens] mask for a batch; every family must treat it as broadcast.
    lora = trunk_lora_json(lora_config_for(family))
    with _opened(stub, model=family, model_type=family, lora_config_json=lora) as session_id:
        hidden = _hidden(3, 6, HIDDEN)
        mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
        one_row = _forward(stub, session_id, {"hidden": hidden, "attention_mask": mask})
        every_row = _forward(stub, session_id, {"hidden": hidden, "attention_mask": mask.repeat(3, 1)})
        assert one_row == every_row


# --- Backward ------------------------------------------------------------------------------------


def test_backward_of_unknown_forward_is_not_found(stub: DataPlaneStub, session: str) -> None:
    assert _code(lambda: _backward(stub, session, 12345, _hidden(1, 3, HIDDEN))) == Code.NOT_FOUND


def test_bad_gradient_is_invalid_and_keeps_the_forward(stub: DataPlaneStub, session: str) -> None:
    _forward(stub, session, {"hidden": _hidden(2, 5, HIDDEN)}, forward_id=7, requires_grad=True)
    assert _code(lambda: _backward(stub, session, 7, _hidden(2, 5, HIDDEN // 2))) == Code.INVALID_ARGUMENT
    assert _code(lambda: _backward(stub, session, 7, _hidden(2, 4, HIDDEN))) == Code.INVALID_ARGUMENT
    assert (
        _code(lambda: _backward(stub, session, 7, _hidden(2, 5, HIDDEN, dtype=torch.float64)))
        == Code.INVALID_ARGUMENT
    )
    # the malformed attempts did not consume the kept graph; a correct gradient still goes through once
    assert len(_backward(stub, session, 7, _hidden(2, 5, HIDDEN))) == 1
    assert _code(lambda: _backward(stub, session, 7, _hidden(2, 5, HIDDEN))) == Code.NOT_FOUND


# --- optimizer -----------------------------------------------------------------------------------


def test_step_before_configure_is_failed_precondition(stub: DataPlaneStub, session: str) -> None:
    assert _code(lambda: stub.Step(pb.StepRequest(session_id=session))) == Code.FAILED_PRECONDITION


@pytest.mark.parametrize(
    ("name", "hparams"),
    [
        ("LBFGS", "{}"),
        ("AdamW", "{lr: 1}"),
        ("AdamW", "[0.1]"),
        ("AdamW", '{"foo": 1}'),
        ("AdamW", '{"lr": "fast"}'),
        ("AdamW", '{"betas": [0.9]}'),
        ("SGD", '{"lr": -1}'),
    ],
)
def test_bad_optimizer_is_invalid(stub: DataPlaneStub, session: str, name: str, hparams: str) -> None:
    request = pb.ConfigureOptimizerRequest(session_id=session, name=name, hparams_json=hparams)
    assert _code(lambda: stub.ConfigureOptimizer(request)) == Code.INVALID_ARGUMENT


def test_bad_step_hparams_leave_the_optimizer_usable(stub: DataPlaneStub, session: str) -> None:
    configure = pb.ConfigureOptimizerRequest(session_id=session, name="AdamW", hparams_json='{"lr": 0.1}')
    stub.ConfigureOptimizer(configure)
    _forward(stub, session, {"hidden": _hidden(2, 5, HIDDEN)}, forward_id=1, requires_grad=True)
    _backward(stub, session, 1, _hidden(2, 5, HIDDEN))
    for hparams in ['{"betas": [0.1]}', '{"lr": true}', '{"nope": 1}', '{"params": 1}']:
        request = pb.StepRequest(session_id=session, hparams_json=hparams)
        assert _code(partial(stub.Step, request)) == Code.INVALID_ARGUMENT
    for scale in (float("nan"), -1.0):
        request = pb.StepRequest(session_id=session, grad_scale=scale)
        assert _code(partial(stub.Step, request)) == Code.INVALID_ARGUMENT
    assert stub.Step(pb.StepRequest(session_id=session, hparams_json='{"lr": 0.05}')).steps == 1


# --- SDK exceptions ------------------------------------------------------------------------------


@pytest.fixture
def dead_edge() -> Iterator[EdgeConnection]:
    # Nothing listens on port 1: any call would fail UNAVAILABLE, so the errors below are raised
    # by the SDK itself before it touches the network.
    with EdgeConnection("127.0.0.1:1", insecure=True, timeout=2.0) as connection:
        yield connection


def test_sdk_rejects_bad_split_before_any_call(
    tiny_models: dict[str, TinyModel], dead_edge: EdgeConnection
) -> None:
    with pytest.raises(InvalidArgument, match="device_layers must be >= 1"):
        SplitModel.from_pretrained(
            tiny_models["llama"].path, edge=dead_edge, device_layers=0, lora_config=lora_config_for("llama")
        )
    assert dead_edge.stats.bytes_sent == 0


def test_sdk_rejects_unsupported_architecture(tmp_path: Path, dead_edge: EdgeConnection) -> None:
    T5Config(vocab_size=32, d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModel, match="'t5' is not supported") as info:
        SplitModel.from_pretrained(
            tmp_path, edge=dead_edge, device_layers=1, lora_config=lora_config_for("llama")
        )
    for family in FAMILY_NAMES:
        assert family in str(info.value)
    assert dead_edge.stats.bytes_sent == 0


def test_sdk_unknown_model_name_is_not_found(tiny_models: dict[str, TinyModel], conn: EdgeConnection) -> None:
    with pytest.raises(NotFound, match="no-such-model"):
        SplitModel.from_pretrained(
            tiny_models["llama"].path,
            edge=conn,
            model="no-such-model",
            device_layers=1,
            lora_config=lora_config_for("llama"),
        )


# Keep last: pytest runs a file's tests in order, so this runs after every bad request above.
def test_edge_still_trains_after_bad_input(tiny_models: dict[str, TinyModel], conn: EdgeConnection) -> None:
    with split_llama(tiny_models["llama"], conn, seed=0) as model:
        optimizer = model.configure_optimizer(torch.optim.AdamW, lr=1e-2)
        generator = torch.Generator().manual_seed(0)
        for _ in range(2):
            loss = model(**make_batch("llama", generator)).loss
            assert torch.isfinite(loss)
            loss.backward()
            optimizer.clip_grad_norm_(1.0)
            optimizer.step()
            optimizer.zero_grad()
        assert model.stats.steps == 2
