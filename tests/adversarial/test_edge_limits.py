"""Data-plane bounds: what one request, one session and one device may take from a shared edge.

A real edge (gRPC over loopback, mutual TLS, session tokens) with small limits; after every attack
the edge still answers health checks and another device still trains a step.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import grpc
import pytest
import torch

from device_client import EdgeConnection
from device_client.stream import SessionStream
from edge_server import EdgeConfig, EdgeServer
from edge_server.limits import DataPlaneLimits
from splitft.errors import PermissionDenied, ResourceExhausted
from splitft.model.lora import trunk_lora_json
from splitft.security.tokens import METADATA_KEY
from splitft.testing.tiny import TinyModel, lora_config_for
from splitft.v1 import dataplane_pb2 as pb
from splitft.v1.dataplane_pb2_grpc import DataPlaneStub
from tests.support.adversarial_edge import FAMILY, Deployment, assert_edge_serves, health, open_request

HIDDEN = 32
MAX_TENSOR = 8192  # bytes per tensor on the main edge: a [4, 12, 32] float32 step is 6144
LIMITS = DataPlaneLimits(
    max_request_bytes=MAX_TENSOR + 256,
    max_sequence_length=64,
    max_batch_tokens=100,  # a [4, 12] training batch fits; 128 float16 tokens already fill a tensor
    max_sessions_per_device=2,
    max_calls_per_device=3,
)
LORA = trunk_lora_json(lora_config_for(FAMILY))  # building its adapter widens an open's window
BLOCKED_SECONDS = 20  # how long a malicious sender holds back its parts (only bounds a failing run)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    return Deployment.create(tmp_path_factory.mktemp("pki"))


@contextmanager
def serving(deployment: Deployment, tiny: TinyModel, **config: Any) -> Iterator[EdgeServer]:
    server = EdgeServer(
        EdgeConfig(
            model_dirs=[f"{FAMILY}={tiny.path}"],
            port=0,
            certs_dir=str(deployment.paths.directory),
            token_issuer_keys=[str(deployment.issuer_pub)],
            **config,
        )
    ).start()
    try:
        yield server
    finally:
        server.stop(grace=0)


@pytest.fixture(scope="module")
def edge(deployment: Deployment, tiny_models: dict[str, TinyModel]) -> Iterator[EdgeServer]:
    with serving(deployment, tiny_models[FAMILY], max_tensor_bytes=MAX_TENSOR, limits=LIMITS) as server:
        yield server


@contextmanager
def session(deployment: Deployment, edge: EdgeServer, device: str = "dev-a") -> Iterator[EdgeConnection]:
    """A connection whose token's session is open (no trunk adapter), closed afterwards."""
    sid = f"s-{uuid.uuid4().hex[:10]}"
    with deployment.connect(edge.address, device, deployment.token(sid, device=device)) as conn:
        conn.call("OpenSession", open_request(sid))
        conn.session_id = sid  # type: ignore[attr-defined]
        try:
            yield conn
        finally:
            conn.call("CloseSession", pb.CloseSessionRequest(session_id=sid))


def _forward(conn: EdgeConnection, tensors: dict[str, torch.Tensor], forward_id: int = 1) -> Any:
    stream = SessionStream(conn)
    try:
        header = pb.ForwardHeader(session_id=conn.session_id, forward_id=forward_id)  # type: ignore[attr-defined]
        return stream.submit(header, tensors, "raw").result(timeout=30)
    finally:
        stream.close()


# --- one request --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "flag"),
    [
        pytest.param((1, 65, HIDDEN), "--max-sequence-length", id="sequence"),
        pytest.param((2, 51, HIDDEN), "--max-batch-tokens", id="batch-x-tokens"),
    ],
)
def test_sequence_and_batch_tokens_are_bounded(deployment, edge, tiny_models, shape, flag) -> None:
    # float16 keeps both under the tensor and request byte bounds: the token bounds refuse them.
    with session(deployment, edge) as conn, pytest.raises(ResourceExhausted, match=flag):
        _forward(conn, {"hidden": torch.zeros(shape, dtype=torch.float16)})
    assert_edge_serves(deployment, edge.address, tiny_models[FAMILY])


def test_total_request_bytes_are_bounded(deployment, edge, tiny_models) -> None:
    tensors = {  # each tensor within --max-tensor-bytes, together above --max-request-bytes
        "hidden": torch.zeros(1, 64, HIDDEN),  # 8192 bytes
        "attention_mask": torch.ones(1, 64, dtype=torch.int64),  # 512 more
    }
    with session(deployment, edge) as conn:
        with pytest.raises(ResourceExhausted, match="--max-request-bytes"):
            _forward(conn, tensors)
        out = _forward(conn, {"hidden": torch.zeros(1, 8, HIDDEN)}, forward_id=2)  # the session goes on
        assert out["hidden"].shape == (1, 8, HIDDEN)
    assert_edge_serves(deployment, edge.address, tiny_models[FAMILY])


def _held_forward(header: pb.ForwardHeader, first: pb.TensorPart, release: threading.Event, held: list[bool]):
    """A Forward request stream that sends its header and one part, then holds back the rest."""
    yield pb.ForwardRequest(header=header)
    yield pb.ForwardRequest(part=first)
    held.append(not release.wait(BLOCKED_SECONDS))  # True: the edge did not answer while we held back
    yield pb.ForwardRequest(part=pb.TensorPart(chunk=pb.TensorChunk(data=b"\0" * 64)))


def _answer_while_held(deployment, edge, token: str, header, first: pb.TensorPart) -> grpc.StatusCode:
    """The status the edge answers a Forward with, asserting it came before the rest was sent."""
    release, held = threading.Event(), []
    with deployment.channel(edge.address, "dev-a") as channel:
        responses = DataPlaneStub(channel).Forward(
            _held_forward(header, first, release, held), metadata=((METADATA_KEY, f"Bearer {token}"),)
        )
        with pytest.raises(grpc.RpcError) as info:
            next(responses)
        release.set()
    assert held == [] or held == [False], "the edge buffered the request before refusing it"
    return info.value.code()


def test_session_is_authorized_before_any_part_is_buffered(deployment, edge) -> None:
    big = pb.Tensor(
        name="hidden", dtype="float32", shape=[1, 64, HIDDEN], codec="raw", total_bytes=MAX_TENSOR
    )
    with session(deployment, edge, device="dev-b") as victim:
        token = deployment.token("s-attacker")  # a valid token, for another session
        header = pb.ForwardHeader(session_id=victim.session_id, forward_id=1)  # type: ignore[attr-defined]
        code = _answer_while_held(deployment, edge, token, header, pb.TensorPart(tensor=big))
    assert code == grpc.StatusCode.PERMISSION_DENIED


def test_unexpected_tensor_names_are_refused_on_their_header(deployment, edge) -> None:
    junk = pb.Tensor(name="junk", dtype="float32", shape=[1, 64, HIDDEN], codec="raw", total_bytes=MAX_TENSOR)
    with session(deployment, edge) as conn:
        header = pb.ForwardHeader(session_id=conn.session_id, forward_id=1)  # type: ignore[attr-defined]
        code = _answer_while_held(deployment, edge, conn.token, header, pb.TensorPart(tensor=junk))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


# --- one device ---------------------------------------------------------------------------------


@contextmanager
def idle_streams(deployment: Deployment, edge: EdgeServer, device: str, count: int) -> Iterator[None]:
    """`count` open Train streams of `device` that send nothing after one refused request each."""
    with ExitStack() as stack:
        for i in range(count):
            token = deployment.token(f"s-idle-{device}-{i}", device=device)
            conn = stack.enter_context(deployment.connect(edge.address, device, token))
            stream = SessionStream(conn)
            stack.callback(stream.close)
            # An answer (here: the token does not cover that session) proves the edge admitted it.
            header = pb.ForwardHeader(session_id="s-not-mine", forward_id=1)
            with pytest.raises(PermissionDenied):
                stream.submit(header, {"hidden": torch.zeros(1, 2, HIDDEN)}, "raw").result(timeout=30)
        yield


def test_one_device_cannot_take_every_call_slot(deployment, edge, tiny_models) -> None:
    with idle_streams(deployment, edge, "dev-c", LIMITS.max_calls_per_device):
        with deployment.connect(edge.address, "dev-c", deployment.token("s-c-more", device="dev-c")) as conn:
            with pytest.raises(ResourceExhausted, match="--max-calls-per-device"):
                conn.list_models()
        assert_edge_serves(deployment, edge.address, tiny_models[FAMILY])
    with deployment.connect(edge.address, "dev-c", deployment.token("s-c-after", device="dev-c")) as conn:
        assert conn.list_models()  # its slots come back when its streams end


def test_sessions_per_device_are_bounded(deployment, edge, tiny_models) -> None:
    with ExitStack() as stack:
        for _ in range(LIMITS.max_sessions_per_device):
            stack.enter_context(session(deployment, edge, device="dev-c"))
        with pytest.raises(ResourceExhausted, match="--max-sessions-per-device"):
            stack.enter_context(session(deployment, edge, device="dev-c"))
        assert_edge_serves(deployment, edge.address, tiny_models[FAMILY])


# --- the whole edge -----------------------------------------------------------------------------


def test_health_is_answered_when_every_call_slot_is_taken(deployment, tiny_models) -> None:
    tiny = tiny_models[FAMILY]
    with serving(deployment, tiny, max_workers=2, max_sessions=2, limits=LIMITS) as edge:  # 4 slots
        with idle_streams(deployment, edge, "dev-a", 3), idle_streams(deployment, edge, "dev-b", 1):
            assert health(deployment, edge.address) == "SERVING"
            with deployment.connect(edge.address, "dev-c", deployment.token("s-c", device="dev-c")) as conn:
                with pytest.raises(ResourceExhausted, match="busy"):
                    conn.list_models()
        assert_edge_serves(deployment, edge.address, tiny)


def test_max_sessions_holds_under_concurrent_opens(deployment, tiny_models) -> None:
    opens, limits = 8, DataPlaneLimits(max_sessions_per_device=100, max_calls_per_device=100)
    with serving(deployment, tiny_models[FAMILY], max_sessions=2, limits=limits) as edge:
        barrier, results = threading.Barrier(opens), []

        def open_one(i: int) -> None:
            sid = f"s-race-{i}"
            with deployment.connect(edge.address, "dev-a", deployment.token(sid)) as conn:
                conn.list_models()  # connected before the race starts
                barrier.wait(timeout=60)
                try:
                    conn.call("OpenSession", open_request(sid, trunk_lora=True, lora_config_json=LORA))
                    results.append("opened")
                except ResourceExhausted as exc:
                    results.append(exc.message)

        threads = [threading.Thread(target=open_one, args=(i,)) for i in range(opens)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert results.count("opened") == 2, results
        assert sum("edge is full" in r for r in results) == opens - 2
        assert edge.sessions.count() == 2


@pytest.mark.parametrize("flag", ["--max-request-bytes", "--max-batch-tokens", "--max-calls-per-device"])
def test_limit_flags_must_be_positive(tiny_models, flag: str, capsys) -> None:
    from splitft.cli import main

    argv = ["edge", "serve", "--insecure", "--port", "0", "--model-dir", str(tiny_models[FAMILY].path)]
    assert main([*argv, flag, "0"]) == 2
    assert f"{flag} must be a positive integer" in " ".join(capsys.readouterr().err.split())
