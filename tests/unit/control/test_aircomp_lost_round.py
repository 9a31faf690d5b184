"""An AirComp round whose devices are all in deep fade (every channel gain under the truncation
threshold) is lost, as the library says, and the job goes on: the upload that closes the round is
accepted, the global adapter stays the round's starting one, and the round records why. Before
this, the library's FailedPrecondition escaped from the last device's /complete (a 409), about one
round in ten of a one-device job."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from splitft.errors import FailedPrecondition
from splitft.federated import aircomp_round
from splitft.jobs.seeds import derive_seed, job_seed
from splitft.jobs.spec import JobCreate
from splitft_control.store import Store
from tests.support.control_fixtures import job_body
from tests.unit.control.test_federated_store import take, tensors_of, upload
from tests.unit.control.test_store import edge, enrolled


def _in_deep_fade(spec_seed: int, number: int) -> bool:
    """Whether round `number` of a one-device job with this spec seed draws a gain under 0.1 (the
    control plane's draw: `aircomp_seed`)."""
    seed = derive_seed("aircomp", job_seed(spec_seed, "unused: the spec's seed wins"), number)
    try:
        aircomp_round([{"w": np.ones(1)}], [1.0], snr_db=None, seed=seed)
    except FailedPrecondition:
        return True
    return False


def _job(store: Store, seed: int, **federated: object) -> str:
    spec = {"rounds": 2, "local_steps": 1, "aggregation": "aircomp", "snr_db": 20.0, **federated}
    body = job_body(["phone"], steps=None, mode="federated", federated=spec, seed=seed)
    return store.create_job(name="air", spec=body, device_names=["phone"]).id


def test_a_round_lost_to_deep_fade_keeps_the_global_adapter_and_the_job_goes_on(store: Store) -> None:
    seed = next(s for s in range(500) if not _in_deep_fade(s, 0) and _in_deep_fade(s, 1))
    phone = enrolled(store, "phone")
    edge(store, "edge-a")
    job_id = _job(store, seed)
    store.complete_session(session_id=take(store, phone), device_id=phone.id, adapter=upload(1.0), examples=3)
    store.complete_session(session_id=take(store, phone), device_id=phone.id, adapter=upload(2.0), examples=3)
    round0, round1 = store.rounds(job_id=job_id)
    assert round1.state == "aggregated" and round1.adapter == round0.adapter
    assert "lost" in round1.reason and "deep fade" in round1.reason and round1.aggregation_error is None
    assert round1.participants == []
    job, _ = store.get_job(job_id=job_id)
    assert job.state == "succeeded"
    a = "base_model.model.layer.0.query.lora_A.weight"
    np.testing.assert_array_equal(
        tensors_of(store.global_adapter(job_id=job_id))[a], tensors_of(round0.adapter)[a]
    )


def test_a_lost_first_round_from_a_fresh_adapter_fails_the_job_with_the_reason(store: Store) -> None:
    phone = enrolled(store, "phone")
    edge(store, "edge-a")
    job_id = _job(store, 1, fading="none", truncation=2.0)  # every gain is 1: under 2, always out
    store.complete_session(session_id=take(store, phone), device_id=phone.id, adapter=upload(1.0), examples=3)
    (round0,) = store.rounds(job_id=job_id)
    assert round0.state == "failed" and round0.adapter is None
    assert "deep fade" in round0.reason and "fresh adapter" in round0.reason
    job, _ = store.get_job(job_id=job_id)
    assert job.state == "failed" and "deep fade" in job.reason


@pytest.mark.parametrize("truncation", [-0.1, 1e9, "automatic", True])
def test_a_truncation_out_of_range_is_refused_by_name(truncation: object) -> None:
    federated = {"rounds": 1, "local_steps": 1, "aggregation": "aircomp", "truncation": truncation}
    with pytest.raises(ValidationError, match="federated.truncation"):
        JobCreate.model_validate(job_body(["phone"], steps=None, mode="federated", federated=federated))


def test_truncation_defaults_to_auto_and_takes_a_number() -> None:
    body = {"rounds": 1, "local_steps": 1, "aggregation": "aircomp"}
    job = JobCreate.model_validate(job_body(["phone"], steps=None, mode="federated", federated=body))
    assert job.federated is not None and job.federated.truncation == "auto"
    fixed = {**body, "truncation": 0.05}
    job = JobCreate.model_validate(job_body(["phone"], steps=None, mode="federated", federated=fixed))
    assert job.federated is not None and job.federated.truncation == 0.05
