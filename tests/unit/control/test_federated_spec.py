"""The federated member of the job spec: what a federated job needs, refused with the field named."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from splitft.jobs.spec import Assignment, JobCreate
from tests.support.control_fixtures import job_body


def _federated(**changes: object) -> dict:
    body = job_body(["a", "b"])
    body.pop("steps")
    body.update(mode="federated", federated={"rounds": 3, "local_steps": 5})
    body.update(changes)
    return body


def test_secure_aggregation_takes_fedavg_and_two_devices() -> None:
    federated = {"rounds": 1, "local_steps": 1, "min_devices": 2, "secure_aggregation": True}
    spec = JobCreate.model_validate(_federated(federated=federated))
    assert spec.federated is not None and spec.federated.secure_aggregation


def test_a_federated_job_has_defaults_for_everything_but_rounds_and_local_work() -> None:
    spec = JobCreate.model_validate(_federated())
    assert spec.federated is not None
    assert (spec.federated.aggregation, spec.federated.min_devices, spec.federated.trunk_adapter) == (
        "fedavg",
        1,
        "averaged",
    )
    assert JobCreate.model_validate(job_body(["a"])).mode == "independent"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"federated": None}, 'mode "federated" needs a federated spec'),
        ({"federated": {"rounds": 2}}, "federated: give exactly one of local_steps or local_epochs"),
        ({"federated": {"rounds": 2, "local_steps": 1, "local_epochs": 1}}, "exactly one of local_steps"),
        ({"steps": 4}, "counts its training per round: federated.local_steps"),
        (
            {"federated": {"rounds": 2, "local_steps": 1, "min_devices": 3}},
            r"federated.min_devices \(3\) exceeds",
        ),
        ({"federated": {"rounds": 0, "local_steps": 1}}, "rounds"),
        ({"federated": {"rounds": 2, "local_steps": 1, "aggregation": "median"}}, "aggregation"),
        (
            {"federated": {"rounds": 2, "local_steps": 1, "trunk_adapter": "shared"}, "trunk_lora": False},
            'federated.trunk_adapter "shared" shares the trunk\'s LoRA: it needs trunk_lora true',
        ),
        ({"federated": {"rounds": 2, "local_steps": 1, "trunk_adapter": "pooled"}}, "trunk_adapter"),
        (
            {"federated": {"rounds": 2, "local_steps": 1, "secure_aggregation": True}},
            "secure_aggregation needs min_devices >= 2",
        ),
        (
            {
                "federated": {
                    "rounds": 2,
                    "local_steps": 1,
                    "min_devices": 2,
                    "secure_aggregation": True,
                    "aggregation": "aircomp",
                }
            },
            'AirComp.*use "fedavg"',
        ),
        ({"mode": "independent"}, 'a federated spec needs mode "federated"'),
        ({"federated": {"rounds": 2, "local_steps": 1, "server_momentum": 1.0}}, "server_momentum"),
        ({"federated": {"rounds": 2, "local_steps": 1, "server_lr": 0}}, "server_lr"),
        ({"federated": {"rounds": 2, "local_steps": 1, "server_lr": 11.0}}, "server_lr"),
        ({"method": "taskedge", "lora": None}, "a federated job averages LoRA adapters"),
    ],
)
def test_bad_federated_specs_name_what_is_wrong(changes: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        JobCreate.model_validate(_federated(**changes))


def test_a_shared_trunk_adapter_is_accepted_and_reaches_the_device() -> None:
    body = _federated(federated={"rounds": 2, "local_steps": 3, "trunk_adapter": "shared"})
    spec = JobCreate.model_validate(body)
    assert spec.federated is not None and spec.federated.trunk_adapter == "shared"
    assignment = Assignment.model_validate(
        {
            "session_id": "s-1",
            "job_id": "j-1",
            "edge_address": "edge:1",
            "token": "t",
            "spec": body,
            "round": 1,
            "shared_trunk_adapter": "j-1/r1",
        }
    )
    assert assignment.shared_trunk_adapter == "j-1/r1"
    older = Assignment.model_validate({**assignment.model_dump(), "shared_trunk_adapter": None})
    assert older.shared_trunk_adapter is None  # an independent or averaged job's session: its own adapter
