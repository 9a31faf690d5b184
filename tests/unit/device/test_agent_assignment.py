"""What the device reads from /v1/assignments/next (device_client/agent/assignment.py): the control
plane's own classes (splitft.jobs.spec), and the SDK configs built from them."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import peft
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from device_client.agent.assignment import method_config, parse_assignment, total_steps
from device_client.agent.control_client import ControlPlaneClient
from splitft.errors import Unavailable
from splitft.jobs.spec import (
    Assignment,
    JobCreate,
    LoraSpec,
    OptimizerSpec,
    ScheduleSpec,
    TaskEdgeSpec,
    TinyTrainSpec,
)
from splitft.methods.taskedge import TaskEdgeConfig
from splitft.methods.tinytrain import TinyTrainConfig
from splitft_control import schemas
from splitft_control.app import create_app
from tests.support.agent_support import credential, job_spec_json
from tests.support.control_fixtures import add_device, control_settings, create_job, register_edge


def rest_assignment(**spec: Any) -> dict[str, Any]:
    """An assignment as the control plane serializes it, for a job with `spec` overrides."""
    return schemas.Assignment(
        session_id="s-1",
        job_id="j-1",
        edge_address="127.0.0.1:1",
        token="t",
        spec=schemas.JobCreate.model_validate(job_spec_json(**spec)),
    ).model_dump(mode="json")


def test_the_control_plane_and_the_agent_share_one_declaration() -> None:
    assert (schemas.Assignment, schemas.JobCreate) == (Assignment, JobCreate)  # no mirror to drift
    rest = rest_assignment()
    parsed = parse_assignment(rest)
    assert type(parsed) is Assignment and parsed.model_dump(mode="json") == rest  # nothing lost
    assert parsed.spec.lora == LoraSpec(
        target_modules=["query", "value"], r=4, lora_alpha=8, lora_dropout=0.0, task_type="SEQ_CLS"
    )
    assert (parsed.spec.optimizer, parsed.spec.schedule) == (OptimizerSpec(), ScheduleSpec())
    assert parsed.spec.clip_grad_norm == 1.0 and parsed.spec.epochs is None
    secret = parse_assignment({**rest, "token": "tok-secret"})
    assert "tok-secret" not in repr(secret)  # logging an assignment never leaks its token


@pytest.mark.parametrize(
    "spec",
    [
        {},
        {"method": "taskedge", "lora": None, "taskedge": {"budget_fraction": 0.01, "n_m": [2, 4]}},
        {"method": "tinytrain", "lora": None, "tinytrain": {"compute_budget_macs": 1e6}},
        {"epochs": 2, "steps": None, "codec": {"activations": "int8", "gradients": "topk:0.01"}},
    ],
    ids=["lora", "taskedge", "tinytrain", "epochs-and-codecs"],
)
def test_the_agent_reads_what_the_real_control_plane_emits(tmp_path: Path, spec: dict[str, Any]) -> None:
    """The real app (SQLite) places a job; the agent's own client fetches and parses the assignment."""
    # A loopback base URL: the agent refuses plaintext to another host (sec-https) unless insecure.
    client = TestClient(create_app(control_settings(tmp_path)), base_url="http://127.0.0.1")
    register_edge(client, "edge-a", models=("bert",))
    device_credential = add_device(client, "phone-17")
    body = {key: value for key, value in job_spec_json(**spec).items() if key != "devices"}
    job = create_job(client, ["phone-17"], **body)
    agent_client = ControlPlaneClient(
        credential(control_plane="http://127.0.0.1", credential=device_credential), http=client
    )
    assignment, retry_after = agent_client.next_assignment()
    assert assignment is not None and retry_after is None
    assert assignment.job_id == job["id"]
    assert assignment.spec == JobCreate.model_validate(job["spec"])  # the spec the operator sees
    assert method_config(assignment.spec) is not None
    assert total_steps(assignment.spec, 12) == (2 * 3 if assignment.spec.epochs else 4)


def test_a_tinytrain_job_becomes_the_sdk_config_with_a_null_compute_budget_as_no_limit() -> None:
    rest = rest_assignment(method="tinytrain", lora=None, tinytrain={"memory_budget_bytes": 5e5})
    config = method_config(parse_assignment(rest).spec)
    assert isinstance(config, TinyTrainConfig)
    assert config.memory_budget_bytes == 5e5 and config.compute_budget_macs == math.inf
    assert config.channel_ratios == (1.0, 0.5, 0.25, 0.125)


def test_taskedge_and_lora_jobs_become_the_sdk_configs() -> None:
    taskedge = method_config(parse_assignment(rest_assignment(method="taskedge", lora=None)).spec)
    assert isinstance(taskedge, TaskEdgeConfig) and taskedge.budget_fraction == TaskEdgeSpec().budget_fraction
    lora = method_config(parse_assignment(rest_assignment()).spec)
    assert isinstance(lora, peft.LoraConfig)
    assert (lora.r, lora.lora_alpha, lora.task_type) == (4, 8, "SEQ_CLS")
    assert TinyTrainSpec().calibration_batches == 4


@pytest.mark.parametrize("broken", [{"spec": None}, {"spec": job_spec_json(steps=None)}, {"token": None}])
def test_malformed_assignments_are_the_servers_fault(broken: dict[str, Any]) -> None:
    raw = {"session_id": "s", "job_id": "j", "edge_address": "h:1", "token": "t", "spec": job_spec_json()}
    raw.update(broken)
    if raw["token"] is None:
        del raw["token"]
    with pytest.raises(Unavailable, match="malformed|exactly one"):
        parse_assignment(raw)


@pytest.mark.parametrize(
    ("spec", "where"),
    [
        ({"batch_size": 0}, "spec.batch_size"),
        ({"lora": {"r": 4, "target_modules": []}}, "spec.lora.target_modules"),
        ({"optimizer": {"name": "Adagrad"}}, "spec.optimizer.name"),
        ({"codec": "zip"}, "spec.codec"),
        ({"device_layers": "1"}, "spec.device_layers"),
    ],
)
def test_the_agent_checks_types_and_bounds_as_the_control_plane_does(
    spec: dict[str, Any], where: str
) -> None:
    """The old mirror checked field names only; the shared class checks values too."""
    raw = {
        "session_id": "s",
        "job_id": "j",
        "edge_address": "h:1",
        "token": "t",
        "spec": job_spec_json(**spec),
    }
    with pytest.raises(Unavailable, match=rf"malformed assignment: {where}: "):
        parse_assignment(raw)
    with pytest.raises(ValidationError):
        JobCreate.model_validate(raw["spec"])  # the same refusal on the REST side (a 422 there)


def test_unknown_fields_are_dropped_by_the_device_and_refused_by_the_control_plane() -> None:
    """A newer control plane may add fields at any level; the device keeps working (forward compatible),
    while a REST request with a misspelt field is still refused."""
    spec = job_spec_json(new_knob=1, lora={"r": 4, "target_modules": ["query"], "future": True})
    spec["optimizer"] = {"name": "SGD", "momentum_v2": 0.9}
    raw = {"session_id": "s", "job_id": "j", "edge_address": "h:1", "token": "t", "spec": spec, "extra": 1}
    parsed = parse_assignment(raw)
    assert parsed.spec.lora == LoraSpec(target_modules=["query"], r=4)
    assert parsed.spec.optimizer == OptimizerSpec(name="SGD")
    with pytest.raises(ValidationError, match="new_knob|future|momentum_v2"):
        JobCreate.model_validate(spec)
