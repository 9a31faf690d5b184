"""Memory admission over real gRPC: an edge whose --memory-limit fits one session of the tiny Llama.

The second session is refused with RESOURCE_EXHAUSTED naming what it needs and what is free; a
forward whose kept graph would not fit is refused while its session and the edge go on serving;
closing the first session makes room for the second.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from device_client import EdgeConnection, SplitModel
from edge_server import EdgeConfig, EdgeServer
from edge_server.memory import measure_profile
from edge_server.registry import load_trunk
from splitft.errors import ResourceExhausted
from splitft.memory.estimate import TrunkAdapter, estimate_session
from splitft.model.lora import trunk_lora_json
from splitft.testing.tiny import TinyModel, lora_config_for, make_batch
from splitft.v1 import dataplane_pb2 as pb
from splitft.v1.dataplane_pb2_grpc import DataPlaneStub
from tests.support.split import split_llama

SHAPE = (4, 12)  # make_batch's default batch: what the sessions announce at open


def _need(tiny: TinyModel) -> int:
    """The estimate the edge admits a session of `split_llama` with (measured as the edge measures)."""
    profile = measure_profile(load_trunk("llama", tiny.path).span)
    config = lora_config_for("llama")
    adapter = TrunkAdapter.lora(config.r, sorted(config.target_modules))
    return estimate_session(
        profile, blocks=2, adapter=adapter, batch_size=SHAPE[0], sequence_length=SHAPE[1]
    ).total


@pytest.fixture(scope="module")
def small_edge(tiny_models: dict[str, TinyModel]) -> Iterator[EdgeServer]:
    tiny = tiny_models["llama"]
    limit = _need(tiny) * 3 // 2  # one session and half of another
    config = EdgeConfig(model_dirs=[f"llama={tiny.path}"], port=0, insecure=True, memory_limit=limit)
    server = EdgeServer(config).start()
    yield server
    server.stop(grace=1)


def _open(tiny: TinyModel, conn: EdgeConnection) -> SplitModel:
    return split_llama(tiny, conn, seed=0, batch_shape=SHAPE)


def _step(model: SplitModel, rows: int = SHAPE[0], seed: int = 0) -> float:
    optimizer = model.configure_optimizer(torch.optim.AdamW, lr=1e-3)
    batch = make_batch("llama", torch.Generator().manual_seed(seed), batch=rows, tokens=SHAPE[1])
    loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return float(loss)


def _serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
    return answer.status == health_pb2.HealthCheckResponse.SERVING


def test_the_second_session_is_refused_until_the_first_closes(
    tiny_models: dict[str, TinyModel], small_edge: EdgeServer
) -> None:
    tiny = tiny_models["llama"]
    with EdgeConnection(small_edge.address, insecure=True) as conn:
        first = _open(tiny, conn)
        _step(first)
        with pytest.raises(ResourceExhausted) as refused:
            _open(tiny, conn)
        message = refused.value.message
        assert "edge memory exhausted" in message and "needs" in message and "is free" in message
        assert f"{SHAPE[0]} x {SHAPE[1]} batch" in message
        request = pb.OpenSessionRequest(
            model="llama",
            device_layers=1,
            head_layers=1,
            trunk_lora=True,
            lora_config_json=trunk_lora_json(lora_config_for("llama")),
            batch_size=SHAPE[0],
            sequence_length=SHAPE[1],
        )
        with grpc.insecure_channel(small_edge.address) as channel, pytest.raises(grpc.RpcError) as raw:
            DataPlaneStub(channel).OpenSession(request)
        assert raw.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert small_edge.sessions.count() == 1
        first.close()
        assert small_edge.memory.used() == 0
        with _open(tiny, conn) as second:  # the room the first held is free again
            _step(second)
    assert small_edge.memory.used() == 0


def test_a_forward_that_would_not_fit_is_refused_and_the_session_goes_on(
    tiny_models: dict[str, TinyModel], small_edge: EdgeServer
) -> None:
    tiny = tiny_models["llama"]
    with EdgeConnection(small_edge.address, insecure=True) as conn, _open(tiny, conn) as model:
        before = _step(model)
        with pytest.raises(ResourceExhausted, match=r"a forward of 32 x 12 tokens .* needs .* is free"):
            _step(model, rows=32)  # eight times the announced batch: its graph cannot be kept
        assert small_edge.memory.kept_bytes(model.session_id) == 0
        assert _serving(small_edge.address)
        after = _step(model, seed=1)  # the same session trains on at its own shape
        assert before > 0 and after > 0


def test_the_memory_limit_flag_takes_byte_sizes(capsys: pytest.CaptureFixture[str]) -> None:
    from splitft.cli import build_parser

    argv = ["edge", "serve", "--insecure", "--model-dir", "m"]
    assert build_parser().parse_args([*argv, "--memory-limit", "8G"]).memory_limit == 8 << 30
    assert build_parser().parse_args([*argv, "--memory-limit", "1048576"]).memory_limit == 1 << 20
    assert build_parser().parse_args(argv).memory_limit is None  # the default share, decided at start
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([*argv, "--memory-limit", "8X"])
    assert exited.value.code == 2 and "not a byte size: '8X'" in capsys.readouterr().err
