"""Exactly once on the wire: the edge answers a repeated request id with the stored answer, refuses
an id below its window or reused for another request with a precise status, keeps each session's
window to itself, and applies requests without an id every time. Raw gRPC stubs on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
import torch

from edge_server import EdgeServer
from splitft.model.lora import trunk_lora_json
from splitft.testing.tiny import lora_config_for
from splitft.v1 import dataplane_pb2 as pb
from splitft.v1.dataplane_pb2_grpc import DataPlaneStub
from splitft.wire.codec import parts_to_tensors, tensors_to_parts

HIDDEN = 32


def _open(stub: DataPlaneStub) -> str:
    lora = lora_config_for("llama")
    lora.lora_dropout = 0.5  # a forward applied twice would draw other masks
    request = pb.OpenSessionRequest(
        model="llama", device_layers=1, head_layers=1, codec="raw", trunk_lora=True,
        lora_config_json=trunk_lora_json(lora), seed=1, model_type="llama", num_layers=4, hidden_size=HIDDEN,
    )  # fmt: skip
    return stub.OpenSession(request).session_id


@pytest.fixture
def stub(edge: EdgeServer) -> Iterator[DataPlaneStub]:
    with grpc.insecure_channel(edge.address) as channel:
        yield DataPlaneStub(channel)


def rid(seq: int, answered_below: int) -> pb.RequestId:
    return pb.RequestId(seq=seq, answered_below=answered_below)


def test_a_repeated_step_is_answered_once_and_older_or_reused_ids_are_refused(stub, edge) -> None:
    sid = _open(stub)
    stub.ConfigureOptimizer(
        pb.ConfigureOptimizerRequest(
            session_id=sid, name="AdamW", hparams_json='{"lr": 0.01}', request_id=rid(1, 1)
        )
    )
    step = pb.StepRequest(session_id=sid, hparams_json='{"lr": 0.01}', request_id=rid(2, 2))
    assert [stub.Step(step).steps for _ in range(3)] == [1, 1, 1]
    assert edge.sessions.get(sid).steps == 1
    assert stub.Step(pb.StepRequest(session_id=sid, hparams_json="{}", request_id=rid(3, 3))).steps == 2
    with pytest.raises(grpc.RpcError) as err:
        stub.Step(step)  # the device said it has every answer below 3
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "request 2 (step) is below this session's replay window, which starts at 3" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        stub.GradNorm(pb.GradNormRequest(session_id=sid, request_id=rid(3, 3)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "request 3 was a step, not a grad-norm" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        stub.GradNorm(pb.GradNormRequest(session_id=sid, request_id=rid(4, 5)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    unnumbered = pb.StepRequest(session_id=sid, hparams_json="{}")  # an old client: applied each time
    assert [stub.Step(unnumbered).steps for _ in range(2)] == [3, 4]
    stub.CloseSession(pb.CloseSessionRequest(session_id=sid))


def _train_messages(sid: str, forward_id: int, seq: int, hidden: torch.Tensor) -> list[pb.TrainRequest]:
    header = pb.ForwardHeader(
        session_id=sid, forward_id=forward_id, training=True, requires_grad=True, request_id=rid(seq, seq)
    )
    return [
        pb.TrainRequest(forward=header),
        *(pb.TrainRequest(part=p) for p in tensors_to_parts({"hidden": hidden}, "raw")),
        pb.TrainRequest(end=pb.StreamEnd()),
    ]


def _hidden_bytes(responses: list[pb.TrainResponse]) -> list[bytes]:
    return [r.part.tensor.data for r in responses if r.WhichOneof("item") == "part"]


def _random_adapter(stub: DataPlaneStub, edge: EdgeServer, sid: str) -> None:
    """LoRA's B starts at zero, which hides dropout on its input: load random weights, as request 1,
    sent twice (the second is answered from the window)."""
    exported = parts_to_tensors(r.part for r in stub.ExportAdapter(pb.ExportAdapterRequest(session_id=sid)))
    generator = torch.Generator().manual_seed(5)
    state = {k: torch.randn(v.shape, generator=generator) for k, v in exported.items()}
    header = pb.LoadAdapterHeader(session_id=sid, request_id=rid(1, 1))
    messages = [
        pb.LoadAdapterRequest(header=header),
        *tensors_to_parts(state, "raw", into=pb.LoadAdapterRequest),
    ]
    assert [stub.LoadAdapter(iter(messages)).loaded for _ in range(2)] == [len(state)] * 2
    assert edge.sessions.wire(sid).replay.replayed == 1


def test_a_repeated_forward_gets_the_same_bytes_and_windows_are_per_session(stub, edge) -> None:
    first, second = _open(stub), _open(stub)
    for sid in (first, second):
        _random_adapter(stub, edge, sid)
    hidden = torch.randn(2, 6, HIDDEN)
    once = _train_messages(first, 1, 2, hidden)
    answers = list(stub.Train(iter(once + once)))  # the same request twice on one stream
    assert [r.WhichOneof("item") for r in answers].count("end") == 2
    data = _hidden_bytes(answers)
    assert len(data) == 2 and data[0] == data[1]
    again = list(stub.Train(iter(once)))  # and on another stream, as after a reconnect
    assert _hidden_bytes(again) == data[:1]
    as_call = [pb.ForwardRequest(header=once[0].forward), pb.ForwardRequest(part=once[1].part)]
    unary = list(stub.Forward(iter(as_call)))  # and as the one-call Forward (stream=False)
    assert [r.part.tensor.data for r in unary if r.part.HasField("tensor")] == data[:1]
    assert edge.sessions.wire(first).replay.replayed == 1 + 3
    other = list(stub.Train(iter(_train_messages(second, 1, 2, hidden))))  # same numbers, own window
    assert edge.sessions.wire(second).replay.replayed == 1 and _hidden_bytes(other)
    fresh = list(stub.Train(iter(_train_messages(first, 2, 3, hidden))))  # a new forward: new masks
    assert _hidden_bytes(fresh) != data[:1]
    for sid in (first, second):
        stub.CloseSession(pb.CloseSessionRequest(session_id=sid))
