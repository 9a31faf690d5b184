"""Tokens on the edge: never silently off, checked per request on long streams, bound to the job's split
and to the edge on every call; session ids are never paths."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from device_client.agent.assignment import parse_assignment
from device_client.stream import SessionStream
from edge_server import EdgeConfig, EdgeServer
from splitft.errors import InvalidArgument, NotFound, PermissionDenied, Unauthenticated, Unavailable
from splitft.local.launch import EdgeProcess
from splitft.model.lora import trunk_lora_json
from splitft.security.tokens import (
    CLOCK_SKEW_SECONDS,
    SplitClaims,
    check_session_id,
    load_public_key,
    verify_token,
)
from splitft.testing.tiny import TinyModel, lora_config_for
from splitft.v1 import dataplane_pb2 as pb
from splitft_control.app import create_app
from tests.support.adversarial_edge import FAMILY, Deployment, assert_edge_serves, open_request
from tests.support.agent_support import assignment_json
from tests.support.control_fixtures import add_device, bearer, control_settings, create_job, register_edge

EDGE_ID = "edge-1"
HIDDEN = 32


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    return Deployment.create(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def edge(deployment: Deployment, tiny_models: dict[str, TinyModel]) -> Iterator[EdgeServer]:
    config = EdgeConfig(
        model_dirs=[f"{FAMILY}={tiny_models[FAMILY].path}"],
        port=0,
        certs_dir=str(deployment.paths.directory),
        token_issuer_keys=[str(deployment.issuer_pub)],
        edge_id=EDGE_ID,
    )
    server = EdgeServer(config).start()
    yield server
    server.stop(grace=0)


def _serve_args(deployment: Deployment, tiny: TinyModel) -> list[str]:
    return [
        *(sys.executable, "-m", "splitft.cli", "edge", "serve", "--port", "0"),
        *("--model-dir", f"{FAMILY}={tiny.path}", "--certs", str(deployment.paths.directory)),
    ]


# --- tokens are never silently off ------------------------------------------------------------------


def test_certs_without_a_token_issuer_refuse_to_start(deployment: Deployment, tiny_models) -> None:
    # The old edge served (without any token check) until killed: 120 s only bounds that failure.
    done = subprocess.run(_serve_args(deployment, tiny_models[FAMILY]), capture_output=True, timeout=120)
    assert done.returncode == 2
    assert b"--no-tokens" in done.stderr and b"--token-issuer-key" in done.stderr


def test_no_tokens_must_be_asked_for_and_is_logged(
    deployment: Deployment, tiny_models, tmp_path: Path
) -> None:
    paths = deployment.paths
    tls = (str(paths.directory), str(paths.device_cert("healthcheck")), str(paths.device_key("healthcheck")))
    log = tmp_path / "edge.log"
    model = f"{FAMILY}={tiny_models[FAMILY].path}"
    with EdgeProcess([model], tls=tls, extra_args=["--no-tokens"], log_path=str(log)):
        pass
    assert "WITHOUT session tokens (--no-tokens)" in " ".join(log.read_text().split())  # rich wraps lines


# --- tokens on the edge ----------------------------------------------------------------------------


def test_open_train_stream_ends_when_its_token_expires(
    deployment: Deployment, edge: EdgeServer, tiny_models
) -> None:
    sid = f"s-exp-{uuid.uuid4().hex[:8]}"
    # Valid for about 3 more seconds (the edge tolerates CLOCK_SKEW_SECONDS past the expiry).
    issued = time.time() - 60 - CLOCK_SKEW_SECONDS + 3
    token = deployment.token(sid, edge=EDGE_ID, ttl_seconds=60, now=issued)
    expires = verify_token(token, [load_public_key(deployment.issuer_pub)]).expires + CLOCK_SKEW_SECONDS
    hidden = {"hidden": torch.zeros(1, 4, HIDDEN)}
    with deployment.connect(edge.address, "dev-a", token) as conn:
        conn.call("OpenSession", open_request(sid))
        stream = SessionStream(conn)
        stream.submit(pb.ForwardHeader(session_id=sid, forward_id=1), hidden, "raw").result(timeout=30)
        while time.time() < expires + 0.5:  # bounded: about 3 s
            time.sleep(0.1)
        with pytest.raises(Unauthenticated, match="expired"):
            stream.submit(pb.ForwardHeader(session_id=sid, forward_id=2), hidden, "raw").result(timeout=30)
        stream.close()
    assert_edge_serves(deployment, edge.address, tiny_models[FAMILY])


def test_idle_stream_is_ended_at_expiry(deployment: Deployment, edge: EdgeServer) -> None:
    sid = f"s-idle-{uuid.uuid4().hex[:8]}"
    token = deployment.token(sid, edge=EDGE_ID, ttl_seconds=60, now=time.time() - 60 - CLOCK_SKEW_SECONDS + 2)
    with deployment.connect(edge.address, "dev-a", token) as conn:
        conn.call("OpenSession", open_request(sid))
        stream = SessionStream(conn)
        hidden = {"hidden": torch.zeros(1, 4, HIDDEN)}
        stream.submit(pb.ForwardHeader(session_id=sid, forward_id=1), hidden, "raw").result(timeout=30)
        # Nothing more is sent: the edge ends the stream itself once the token expires.
        stream._reader.join(timeout=30)
        assert not stream._reader.is_alive()
        with pytest.raises(Unauthenticated, match="expired"):
            stream.submit(pb.ForwardHeader(session_id=sid, forward_id=2), hidden, "raw")
        stream.close()


def test_list_models_checks_the_edge_claim(deployment: Deployment, edge: EdgeServer) -> None:
    with deployment.connect(edge.address, "dev-a", deployment.token("s-e2", edge="edge-2")) as conn:
        with pytest.raises(PermissionDenied, match="another edge"):
            conn.list_models()
    with deployment.connect(edge.address, "dev-a", deployment.token("s-e1", edge=EDGE_ID)) as conn:
        assert [m.name for m in conn.list_models()] == [FAMILY]


SPLIT = SplitClaims(device_layers=1, head_layers=1, trunk_lora=True, codec="int8")
LORA = trunk_lora_json(lora_config_for(FAMILY))


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        pytest.param({"device_layers": 2}, "device_layers", id="device-layers"),
        pytest.param({"head_layers": 0}, "head_layers", id="head-layers"),
        pytest.param({"codec": "raw"}, "codec", id="codec"),
        pytest.param({"codec": "activations=int8,gradients=raw"}, "codec", id="codec-per-direction"),
        pytest.param({"trunk_lora": False, "lora_config_json": ""}, "trunk_lora", id="trunk-lora"),
    ],
)
def test_open_session_must_match_the_split_the_token_binds(
    deployment: Deployment, edge: EdgeServer, changes: dict, field: str
) -> None:
    sid = f"s-split-{uuid.uuid4().hex[:8]}"
    asked = {"codec": "int8", "trunk_lora": True, "lora_config_json": LORA, **changes}
    with deployment.connect(edge.address, "dev-a", deployment.token(sid, edge=EDGE_ID, split=SPLIT)) as conn:
        with pytest.raises(PermissionDenied, match=field):
            conn.call("OpenSession", open_request(sid, **asked))
        conn.call("OpenSession", open_request(sid, codec="int8", trunk_lora=True, lora_config_json=LORA))
        conn.call("CloseSession", pb.CloseSessionRequest(session_id=sid))


def test_control_plane_tokens_bind_the_jobs_split(tmp_path: Path) -> None:
    client = TestClient(create_app(control_settings(tmp_path)))
    edge = register_edge(client, "edge-a")
    credential = add_device(client, "phone")
    create_job(
        client, ["phone"], device_layers=2, head_layers=1, codec={"activations": "int8", "gradients": "fp16"}
    )
    assignment = client.get("/v1/assignments/next", headers=bearer(credential)).json()
    claims = verify_token(assignment["token"], [load_public_key(edge["token_issuer_public_key"].encode())])
    bound = (claims.device_layers, claims.head_layers, claims.trunk_lora, claims.codec)
    assert bound == (2, 1, True, assignment["spec"]["codec"])  # the job's canonical codec string


def test_close_where_ends_one_devices_sessions(deployment: Deployment, edge: EdgeServer) -> None:
    mine, theirs = f"s-cw-a-{uuid.uuid4().hex[:6]}", f"s-cw-b-{uuid.uuid4().hex[:6]}"
    with (
        deployment.connect(edge.address, "dev-a", deployment.token(mine, edge=EDGE_ID)) as a,
        deployment.connect(
            edge.address, "dev-b", deployment.token(theirs, device="dev-b", edge=EDGE_ID)
        ) as b,
    ):
        a.call("OpenSession", open_request(mine))
        b.call("OpenSession", open_request(theirs))
        closed = edge.sessions.close_where(lambda s: s.owner.device == "dev-a")
        assert mine in closed and theirs not in closed
        with pytest.raises(NotFound):
            a.call("Step", pb.StepRequest(session_id=mine))
        b.call("Step", pb.StepRequest(session_id=theirs))  # another device's session goes on
        b.call("CloseSession", pb.CloseSessionRequest(session_id=theirs))


# --- session ids are never paths -------------------------------------------------------------------


BAD_IDS = ["..", ".", "../../etc/cron.d/x", "/abs", "a/b", "a\\b", "", "x" * 129, "s\x00"]


@pytest.mark.parametrize("session_id", BAD_IDS)
def test_session_id_validator_refuses_paths(session_id: str) -> None:
    with pytest.raises(InvalidArgument, match="session_id"):
        check_session_id(session_id)


@pytest.mark.parametrize("session_id", ["..", "."])
def test_edge_refuses_dot_session_ids(deployment: Deployment, edge: EdgeServer, session_id: str) -> None:
    with deployment.connect(edge.address, "dev-a", deployment.token(session_id)) as conn:
        with pytest.raises(InvalidArgument, match="session_id"):
            conn.call("OpenSession", open_request(session_id))


@pytest.mark.parametrize("session_id", ["..", "../../tmp/x", "/etc/x"])
def test_device_agent_refuses_a_session_id_that_is_a_path(session_id: str) -> None:
    # The agent writes --record-dir/<session id>/...: a control plane must not pick the path.
    with pytest.raises(Unavailable, match="session_id"):
        parse_assignment(assignment_json(session_id))
