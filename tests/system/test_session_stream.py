"""The `Train` session stream: answers in order, a bad request fails alone, a malformed stream ends
with INVALID_ARGUMENT, and the edge keeps serving. Real gRPC on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
import torch

from device_client import EdgeConnection, SplitModel
from device_client.stream import SessionStream
from edge_server import EdgeServer
from splitft.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from splitft.model.lora import trunk_lora_json
from splitft.testing.tiny import lora_config_for, make_batch
from splitft.v1 import dataplane_pb2 as pb
from splitft.v1.dataplane_pb2_grpc import DataPlaneStub
from splitft.wire.codec import tensors_to_parts
from tests.system.test_what_crosses_the_wire import Recorder

HIDDEN = 32


def _open(stub: DataPlaneStub) -> str:
    request = pb.OpenSessionRequest(
        model="llama", device_layers=1, head_layers=1, codec="raw", trunk_lora=True,
        lora_config_json=trunk_lora_json(lora_config_for("llama")), seed=1,
        model_type="llama", num_layers=4, hidden_size=HIDDEN,
    )  # fmt: skip
    return stub.OpenSession(request).session_id


@pytest.fixture
def opened(edge: EdgeServer) -> Iterator[tuple[DataPlaneStub, str]]:
    with grpc.insecure_channel(edge.address) as channel:
        stub = DataPlaneStub(channel)
        session_id = _open(stub)
        yield stub, session_id
        stub.CloseSession(pb.CloseSessionRequest(session_id=session_id))


def _forward(session_id: str, forward_id: int, tensors: dict[str, torch.Tensor]) -> list[pb.TrainRequest]:
    header = pb.ForwardHeader(session_id=session_id, forward_id=forward_id, training=True, requires_grad=True)
    return [
        pb.TrainRequest(forward=header),
        *(pb.TrainRequest(part=p) for p in tensors_to_parts(tensors, "raw")),
        pb.TrainRequest(end=pb.StreamEnd()),
    ]


def _backward(session_id: str, forward_id: int, grad: torch.Tensor) -> list[pb.TrainRequest]:
    header = pb.BackwardHeader(session_id=session_id, forward_id=forward_id)
    return [
        pb.TrainRequest(backward=header),
        *(pb.TrainRequest(part=p) for p in tensors_to_parts({"grad": grad}, "raw")),
        pb.TrainRequest(end=pb.StreamEnd()),
    ]


def _answers(responses: list[pb.TrainResponse]) -> list[tuple[int, bool, str]]:
    """(forward_id, backward, 'ok' or the error code) per answered request, in order."""
    out = []
    for r in responses:
        item = r.WhichOneof("item")
        if item == "end":
            out.append((r.forward_id, r.backward, "ok"))
        elif item == "error":
            out.append((r.forward_id, r.backward, r.error.code))
    return out


def test_requests_are_answered_in_order_and_bad_ones_fail_alone(opened) -> None:
    stub, sid = opened
    hidden = torch.randn(2, 5, HIDDEN)
    truncated = list(tensors_to_parts({"hidden": hidden}, "raw"))
    truncated[0].tensor.data = truncated[0].tensor.data[:-4]
    header = pb.ForwardHeader(session_id=sid, forward_id=3, requires_grad=True)
    messages = [
        *_forward(sid, 1, {"hidden": hidden}),
        *_backward(sid, 99, torch.ones(2, 5, HIDDEN)),  # no such forward
        *_backward(sid, 1, torch.ones(2, 5, HIDDEN + 1)),  # wrong shape: the forward is kept
        *[pb.TrainRequest(forward=header), *(pb.TrainRequest(part=p) for p in truncated)],
        pb.TrainRequest(end=pb.StreamEnd()),
        *_forward(sid, 4, {"hidden": hidden.double()}),  # wrong dtype
        *_forward("0" * 32, 5, {"hidden": hidden}),  # another (unknown) session
        *_backward(sid, 1, torch.ones(2, 5, HIDDEN)),  # the kept forward still works
        *_forward(sid, 6, {"hidden": hidden}),
    ]
    responses = list(stub.Train(iter(messages)))
    assert _answers(responses) == [
        (1, False, "ok"),
        (99, True, "NOT_FOUND"),
        (1, True, "INVALID_ARGUMENT"),
        (3, False, "INVALID_ARGUMENT"),
        (4, False, "INVALID_ARGUMENT"),
        (5, False, "NOT_FOUND"),
        (1, True, "ok"),
        (6, False, "ok"),
    ]
    forward_parts = [r.part for r in responses if r.forward_id == 1 and not r.backward and r.HasField("part")]
    assert forward_parts and forward_parts[0].tensor.name == "hidden"


@pytest.mark.parametrize(
    "case",
    ["part_outside", "end_outside", "header_inside", "empty"],
)
def test_a_malformed_stream_ends_with_invalid_argument_and_the_edge_serves_on(opened, case: str) -> None:
    stub, sid = opened
    hidden = torch.randn(1, 3, HIDDEN)
    good = _forward(sid, 1, {"hidden": hidden})
    bad = {
        "part_outside": [good[1]],
        "end_outside": [good[-1]],
        "header_inside": [good[0], good[0]],
        "empty": [pb.TrainRequest()],
    }[case]
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Train(iter(good + bad)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    again = list(stub.Train(iter(_forward(sid, 2, {"hidden": hidden}))))
    assert _answers(again) == [(2, False, "ok")]


def test_sdk_stream_maps_errors_to_the_catalog_and_fails_pending_on_close(edge: EdgeServer) -> None:
    with EdgeConnection(edge.address, insecure=True) as conn:
        sid = _open(conn.stub)
        stream = SessionStream(conn)
        hidden = torch.randn(1, 3, HIDDEN)
        ok = stream.submit(
            pb.ForwardHeader(session_id=sid, forward_id=1, requires_grad=True), {"hidden": hidden}, "raw"
        )
        missing = stream.submit(pb.BackwardHeader(session_id=sid, forward_id=7), {"grad": hidden}, "raw")
        bad = stream.submit(
            pb.ForwardHeader(session_id=sid, forward_id=2), {"hidden": hidden[..., :5]}, "raw"
        )
        assert ok.result(timeout=30)["hidden"].shape == hidden.shape
        with pytest.raises(NotFound):
            missing.result(timeout=30)
        with pytest.raises(InvalidArgument):
            bad.result(timeout=30)
        stream.close()
        with pytest.raises(Unavailable):  # a closed stream takes no more requests
            stream.submit(pb.ForwardHeader(session_id=sid, forward_id=3), {"hidden": hidden}, "raw")
        conn.call("CloseSession", pb.CloseSessionRequest(session_id=sid))


def test_split_model_uses_one_stream_and_equals_one_call_per_request(tiny_models, edge: EdgeServer) -> None:
    """The stream and the pre-stream calls carry the same numbers."""
    tiny = tiny_models["llama"]
    batches = [make_batch("llama", torch.Generator().manual_seed(i)) for i in range(3)]
    losses, methods = {}, {}
    for use_stream in (True, False):
        recorder = Recorder()
        with EdgeConnection(edge.address, insecure=True, interceptors=[recorder]) as conn:
            torch.manual_seed(0)
            model = SplitModel.from_pretrained(
                tiny.path, edge=conn, model="llama", device_layers=1, head_layers=1,
                lora_config=lora_config_for("llama"), seed=5, stream=use_stream,
            )  # fmt: skip
            opt = model.configure_optimizer(torch.optim.AdamW, lr=1e-2)
            model.train()
            run = []
            for batch in batches:
                loss = model(**batch).loss
                loss.backward()
                opt.step()
                opt.zero_grad()
                run.append(loss.item())
            losses[use_stream] = run
            methods[use_stream] = [call.method for call in recorder.calls]
            model.close()
            with pytest.raises(FailedPrecondition):
                model(**batches[0])
    assert losses[True] == losses[False]
    assert methods[True].count("Train") == 1 and "Forward" not in methods[True]
    assert (
        "Train" not in methods[False]
        and methods[False].count("Forward") == methods[False].count("Backward") == 3
    )
