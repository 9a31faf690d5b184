"""Session life cycle: frozen trunk, inference, TTL expiry, idempotent close, health."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from device_client import EdgeConnection, SplitModel
from edge_server import EdgeConfig, EdgeServer
from splitft.errors import FailedPrecondition, NotFound
from splitft.testing.tiny import TinyModel, make_batch
from splitft.v1 import dataplane_pb2 as pb
from splitft.v1.dataplane_pb2_grpc import DataPlaneStub
from splitft.wire.codec import tensors_to_parts
from tests.support.split import split_llama

TRUNK_KEY = re.compile(r"\.layers\.[12]\.")  # llama trunk blocks with device_layers=1, head_layers=1 of 4


def _llama(
    tiny_models: dict[str, TinyModel], conn: EdgeConnection, *, trunk_lora: bool = True, seed: int = 0
) -> SplitModel:
    return split_llama(tiny_models["llama"], conn, seed=seed, trunk_lora=trunk_lora)


def test_frozen_trunk_still_trains_device_adapters(
    tiny_models: dict[str, TinyModel], conn: EdgeConnection, edge: EdgeServer
) -> None:
    with _llama(tiny_models, conn, trunk_lora=False) as model:
        assert model.trainable_parameters()["trunk"] == 0
        assert edge.sessions.get(model.session_id).trainable_parameters == 0
        before = model.adapter_state_dict()
        assert before and not any(TRUNK_KEY.search(k) for k in before)
        optimizer = model.configure_optimizer(torch.optim.AdamW, lr=1e-2)
        generator = torch.Generator().manual_seed(0)
        for _ in range(2):
            loss = model(**make_batch("llama", generator)).loss
            assert torch.isfinite(loss)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        after = model.adapter_state_dict()
        assert after.keys() == before.keys()
        # block 0 sits before the trunk: it only learns if gradients flow back through the frozen trunk
        changed = {k for k in after if not torch.equal(after[k], before[k])}
        assert any(".layers.0." in k for k in changed) and any(".layers.3." in k for k in changed)


def test_inference_keeps_no_graph(
    tiny_models: dict[str, TinyModel], conn: EdgeConnection, edge: EdgeServer
) -> None:
    with _llama(tiny_models, conn) as model, grpc.insecure_channel(edge.address) as channel:
        batch = make_batch("llama", torch.Generator().manual_seed(0))
        model.eval()
        with torch.no_grad():
            first = model(**batch).logits
            second = model(**batch).logits
        assert torch.equal(first, second) and not first.requires_grad
        assert model.stats.forwards == 2
        assert not edge.sessions.get(model.session_id)._pending  # nothing kept for a backward
        backward = [pb.BackwardRequest(header=pb.BackwardHeader(session_id=model.session_id, forward_id=1))]
        grad = torch.zeros(4, 12, 32)
        backward += [pb.BackwardRequest(part=p) for p in tensors_to_parts({"grad": grad}, "raw")]
        with pytest.raises(grpc.RpcError) as info:
            list(DataPlaneStub(channel).Backward(iter(backward)))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_close_is_idempotent(
    tiny_models: dict[str, TinyModel], conn: EdgeConnection, edge: EdgeServer
) -> None:
    model = _llama(tiny_models, conn)
    opened = edge.sessions.count()
    model.close()
    model.close()
    assert edge.sessions.count() == opened - 1
    with pytest.raises(FailedPrecondition):
        model(**make_batch("llama", torch.Generator().manual_seed(0)))


@pytest.fixture
def short_ttl_edge(tiny_models: dict[str, TinyModel]) -> Iterator[EdgeServer]:
    config = EdgeConfig(
        model_dirs=[f"llama={tiny_models['llama'].path}"], port=0, insecure=True, session_ttl=0.3
    )
    server = EdgeServer(config).start()
    yield server
    server.stop(grace=0)


def test_idle_session_expires(tiny_models: dict[str, TinyModel], short_ttl_edge: EdgeServer) -> None:
    with EdgeConnection(short_ttl_edge.address, insecure=True) as conn:
        idle = _llama(tiny_models, conn, seed=1)
        # A bare session (no device model to build) so nothing delays its first keep-alive past the TTL.
        busy = conn.call("OpenSession", pb.OpenSessionRequest(model="llama", device_layers=1)).session_id
        assert short_ttl_edge.sessions.count() == 2
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:  # any call counts as activity and keeps a session alive
            conn.call("GradNorm", pb.GradNormRequest(session_id=busy))
            time.sleep(0.05)
        assert short_ttl_edge.sessions.count() == 1
        with pytest.raises(NotFound, match="expired"):
            conn.call("GradNorm", pb.GradNormRequest(session_id=idle.session_id))
        with pytest.raises(NotFound):
            idle(**make_batch("llama", torch.Generator().manual_seed(0)))
        idle.close()  # the edge already dropped it; closing from the SDK still succeeds
        conn.call("CloseSession", pb.CloseSessionRequest(session_id=busy))
        assert short_ttl_edge.sessions.count() == 0


@pytest.mark.parametrize("service", ["", "splitft.v1.DataPlane"])
def test_health_serving(edge: EdgeServer, service: str) -> None:
    with grpc.insecure_channel(edge.address) as channel:
        request = health_pb2.HealthCheckRequest(service=service)
        reply = health_pb2_grpc.HealthStub(channel).Check(request, timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_health_unknown_service_is_not_found(edge: EdgeServer) -> None:
    with grpc.insecure_channel(edge.address) as channel, pytest.raises(grpc.RpcError) as info:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="nope"), timeout=5)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
