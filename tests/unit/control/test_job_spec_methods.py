"""The job spec's selection-method members go through the method registry, on both sides.

The control plane validates each member with the method's own config class (so it refuses what the
device's SDK would refuse, not only what pydantic's bounds catch), and the agent builds the SDK's
config from the member through the registry, with no converter per method.
"""

from __future__ import annotations

import math
import re
import typing
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from device_client.agent.assignment import method_config
from splitft.jobs.spec import SELECTION_SPECS, JobCreate, TaskEdgeSpec, TinyTrainSpec
from splitft.methods import get_method, method_names
from splitft.methods.taskedge import TaskEdgeConfig
from splitft.methods.tinytrain import TinyTrainConfig
from splitft.methods.tinytrain.config import DEFAULT_DEVICE_MEMORY_BYTES, DEVICE_MEMORY_SHARE
from splitft_control.app import create_app
from tests.support.control_fixtures import OPERATOR_KEY, add_device, bearer, control_settings

BASE = {"name": "j", "model": "m", "device_layers": 1, "steps": 1, "devices": ["dev-m"]}


def test_every_registered_method_has_a_member_and_a_name_in_the_spec() -> None:
    assert set(SELECTION_SPECS) == set(method_names())
    assert set(typing.get_args(JobCreate.model_fields["method"].annotation)) == {"lora", *method_names()}
    for name, spec in SELECTION_SPECS.items():
        assert spec.method_name == name and name in JobCreate.model_fields


@pytest.mark.parametrize(
    ("method", "member", "why"),
    [
        ("taskedge", {"n_m": [4, 2]}, "1 <= N <= M"),  # pydantic's bounds took it: two integers
        ("taskedge", {"target_modules": [""]}, "non-empty names"),
        ("tinytrain", {"channel_ratios": [0.5, 0.5]}, "distinct"),
        ("tinytrain", {"channel_ratios": [1.5]}, "(0, 1]"),
        ("tinytrain", {"target_modules": ["q", ""]}, "non-empty names"),
    ],
)
def test_the_method_config_refuses_what_the_sdk_would(method: str, member: dict, why: str, tmp_path: Path):
    with pytest.raises(ValidationError, match=re.escape(why)):
        JobCreate.model_validate({**BASE, "method": method, method: member})
    client = TestClient(create_app(control_settings(tmp_path)))
    add_device(client, "dev-m")
    response = client.post(
        "/v1/jobs", json={**BASE, "method": method, method: member}, headers=bearer(OPERATOR_KEY)
    )
    assert response.status_code == 422, response.text
    assert why in response.text


def test_the_agent_builds_each_methods_config_through_the_registry() -> None:
    taskedge = JobCreate.model_validate(
        {
            **BASE,
            "method": "taskedge",
            "taskedge": {"budget_fraction": 0.01, "n_m": [2, 4], "calibration_batches": 2},
        }
    )
    config = method_config(taskedge)
    assert config == TaskEdgeConfig(budget_fraction=0.01, n_m=(2, 4))
    assert taskedge.selection_spec() == TaskEdgeSpec(budget_fraction=0.01, n_m=(2, 4), calibration_batches=2)
    tinytrain = JobCreate.model_validate({**BASE, "method": "tinytrain"})  # member absent: its defaults
    assert tinytrain.selection_spec() == TinyTrainSpec()
    expected = get_method("tinytrain").config_from(TinyTrainSpec().config_fields())
    default_budget = DEFAULT_DEVICE_MEMORY_BYTES * DEVICE_MEMORY_SHARE  # a quarter of 512 MiB
    assert method_config(tinytrain) == expected == TinyTrainConfig(default_budget, math.inf)
    lora: dict[str, Any] = {**BASE, "lora": {"target_modules": ["q"]}}
    assert JobCreate.model_validate(lora).selection_spec() is None


def test_a_tinytrain_job_without_a_memory_budget_gets_a_share_of_its_devices_memory() -> None:
    """No budget never means "train everything": the device's declared memory (or the documented
    512 MiB default) gives the budget; edge budgets stay unlimited unless given."""
    declared = JobCreate.model_validate(
        {**BASE, "method": "tinytrain", "tinytrain": {"device_memory_bytes": 2 * 1024**3}}
    )
    config = method_config(declared)
    assert config.memory_budget_bytes == 512 * 1024**2 and config.compute_budget_macs == math.inf
    assert config.edge_memory_budget_bytes == math.inf and config.edge_compute_budget_macs == math.inf
    explicit = {
        "memory_budget_bytes": 1e6,
        "device_memory_bytes": 2 * 1024**3,
        "edge_memory_budget_bytes": 5e5,
    }
    config = method_config(JobCreate.model_validate({**BASE, "method": "tinytrain", "tinytrain": explicit}))
    assert config.memory_budget_bytes == 1e6 and config.edge_memory_budget_bytes == 5e5


@pytest.mark.parametrize(
    "bad", [{"device_memory_bytes": 0}, {"device_memory_bytes": 1.5}, {"edge_compute_budget_macs": -1}]
)
def test_tinytrain_memory_fields_are_checked(bad: dict) -> None:
    with pytest.raises(ValidationError):
        JobCreate.model_validate({**BASE, "method": "tinytrain", "tinytrain": bad})
