"""A peer's trunk LoRA config cannot freeze the edge (regexes) nor grow its adapter without bound.

The edge runs in its own process (`splitft edge serve`, mutual TLS, session tokens): a regex that
backtracks forever would hold that process's GIL, so it must never get to peft at all. On the old
code the first test's OpenSession timed out and the edge stopped answering everyone.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from peft import LoraConfig

from device_client import SplitModel
from edge_server.limits import lora_parameter_estimate
from edge_server.registry import ModelRegistry
from edge_server.sessions import SessionManager
from splitft.compress import parse_codecs
from splitft.errors import InvalidArgument, ResourceExhausted
from splitft.local.launch import EdgeProcess
from splitft.model.lora import trunk_lora_from_json, trunk_lora_json
from splitft.testing.tiny import FAMILY_NAMES, TinyModel, lora_config_for
from splitft.v1 import dataplane_pb2 as pb
from tests.support.adversarial_edge import FAMILY, Deployment, assert_edge_serves, open_request

ADAPTER_LIMIT = 100_000  # trainable trunk parameters per session on this edge
EVIL = "(.|.)*Z"  # backtracks exponentially in the length of every module name it is matched against
GOOD = json.loads(trunk_lora_json(lora_config_for(FAMILY)))


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    return Deployment.create(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def edge(
    deployment: Deployment, tiny_models: dict[str, TinyModel], tmp_path_factory
) -> Iterator[EdgeProcess]:
    paths = deployment.paths
    tls = (str(paths.directory), str(paths.device_cert("healthcheck")), str(paths.device_key("healthcheck")))
    log = tmp_path_factory.mktemp("edge") / "edge.log"
    args = ["--token-issuer-key", str(deployment.issuer_pub), "--max-adapter-parameters", str(ADAPTER_LIMIT)]
    with EdgeProcess(
        [f"{FAMILY}={tiny_models[FAMILY].path}"], tls=tls, extra_args=args, threads=1, log_path=str(log)
    ) as process:
        yield process


def _open_with(deployment: Deployment, edge: EdgeProcess, fields: dict[str, Any]) -> None:
    """Open (and close again) a session with this trunk LoRA config."""
    session = f"s-lora-{uuid.uuid4().hex[:8]}"
    request = open_request(session, trunk_lora=True, lora_config_json=json.dumps(fields))
    # 30 s: far beyond a refusal (milliseconds); a regex reaching peft would take hours.
    with deployment.connect(edge.address, "dev-a", deployment.token(session), timeout=30) as conn:
        conn.call("OpenSession", request)
        conn.call("CloseSession", pb.CloseSessionRequest(session_id=session))


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        pytest.param({**GOOD, "target_modules": EVIL}, "target_modules", id="target-regex"),
        pytest.param({**GOOD, "exclude_modules": EVIL}, "exclude_modules", id="exclude-regex"),
        pytest.param({**GOOD, "layers_pattern": EVIL}, "layers_pattern", id="layers-pattern"),
        pytest.param({**GOOD, "rank_pattern": {EVIL: 8}}, "rank_pattern", id="rank-pattern-regex"),
        pytest.param({**GOOD, "alpha_pattern": {"q_proj": 16}}, "alpha_pattern", id="alpha-pattern"),
        pytest.param({**GOOD, "rank_pattern": {"q_proj": 300_000}}, "rank_pattern", id="rank-past-max"),
        pytest.param({**GOOD, "target_modules": ["q_proj", EVIL]}, "target_modules", id="regex-in-list"),
        pytest.param({**GOOD, "target_modules": ["q" * 200]}, "target_modules", id="name-too-long"),
        pytest.param({**GOOD, "exclude_modules": ["o_proj$"]}, "exclude_modules", id="exclude-bad-char"),
    ],
)
def test_pattern_fields_are_refused_and_the_edge_keeps_serving(
    deployment: Deployment, edge: EdgeProcess, tiny_models, fields: dict[str, Any], named: str
) -> None:
    with pytest.raises(InvalidArgument, match=named):
        _open_with(deployment, edge, fields)
    assert_edge_serves(deployment, edge.address, tiny_models[FAMILY])


def test_adapter_size_is_bounded_per_session(deployment: Deployment, edge: EdgeProcess, tiny_models) -> None:
    # r = 4096 is a valid rank, but on every targeted projection it is ~1M parameters: over the bound.
    with pytest.raises(ResourceExhausted, match=f"{ADAPTER_LIMIT}.*--max-adapter-parameters"):
        _open_with(deployment, edge, {**GOOD, "r": 4096})
    assert_edge_serves(deployment, edge.address, tiny_models[FAMILY])  # rank 4: well under the bound


def test_exclude_list_of_names_is_accepted(deployment: Deployment, edge: EdgeProcess) -> None:
    _open_with(deployment, edge, {**GOOD, "exclude_modules": ["o_proj"]})


@pytest.mark.parametrize(
    ("config", "named"),
    [
        pytest.param(LoraConfig(r=4, target_modules="q_proj|v_proj"), "target_modules", id="string-targets"),
        pytest.param(
            LoraConfig(r=4, target_modules=["q_proj"], rank_pattern={"q_proj": 64}), "rank_pattern", id="rank"
        ),
        pytest.param(
            LoraConfig(r=4, target_modules=["q_proj"], exclude_modules=".*o_proj"),
            "exclude_modules",
            id="string-excludes",
        ),
    ],
)
def test_device_sdk_refuses_before_sending(
    deployment: Deployment, edge: EdgeProcess, tiny_models, config: LoraConfig, named: str
) -> None:
    session = f"s-sdk-{uuid.uuid4().hex[:8]}"
    with deployment.connect(edge.address, "dev-a", deployment.token(session)) as conn:
        with pytest.raises(InvalidArgument, match=named):
            SplitModel.from_pretrained(
                tiny_models[FAMILY].path,
                edge=conn,
                model=FAMILY,
                device_layers=1,
                head_layers=1,
                lora_config=config,
            )
        # Nothing was opened: the same token can still open its session with a good config.
        conn.call("OpenSession", open_request(session, trunk_lora=True, lora_config_json=json.dumps(GOOD)))
        conn.call("CloseSession", pb.CloseSessionRequest(session_id=session))


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_adapter_bound_is_checked_on_an_exact_count(tiny_models, family: str) -> None:
    # The bound is checked before peft allocates anything, on a count that must not undershoot.
    sessions = SessionManager(ModelRegistry.from_dirs([f"{family}={tiny_models[family].path}"]))
    config = trunk_lora_from_json(trunk_lora_json(lora_config_for(family)))
    session = sessions.open(
        family, device_layers=1, head_layers=1, codecs=parse_codecs("raw"), lora_config=config, seed=1
    )
    assert lora_parameter_estimate(session.root, config) == session.trainable_parameters > 0
    sessions.stop()
