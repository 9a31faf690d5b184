"""A job's seeds (splitft.jobs.seeds): the common init from the job, each device's stream from
(job seed, device name, round); stable values, so a rerun trains identically on any platform."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from splitft.jobs.seeds import derive_seed, device_seed, job_seed
from splitft.jobs.spec import JobCreate
from tests.support.control_fixtures import job_body


def test_the_job_seed_is_the_spec_s_or_derived_from_the_job_id() -> None:
    assert job_seed(7, "j-1") == job_seed(7, "j-2") == 7
    assert job_seed(None, "j-1") == job_seed(None, "j-1") != job_seed(None, "j-2")
    assert 0 <= job_seed(None, "j-1") < 2**62
    assert job_seed(None, "j-1") == derive_seed("job", "j-1")


def test_each_device_and_round_has_its_own_stream_and_independent_is_round_0() -> None:
    seeds = {device_seed(5, d, r) for d in ("phone-1", "phone-2") for r in (0, 1, 2)}
    assert len(seeds) == 6  # devices differ, rounds differ
    assert device_seed(5, "phone-1", None) == device_seed(5, "phone-1", 0)  # independent == round 0
    assert device_seed(5, "phone-1", 0) != device_seed(6, "phone-1", 0)
    assert all(0 <= s < 2**62 for s in seeds)


def test_the_seed_is_pinned_across_releases() -> None:
    """Changing the derivation silently would change every job's training: pin one value."""
    assert device_seed(5, "phone-1", 0) == derive_seed("device", 5, "phone-1", 0) == 2500607136976246532


@pytest.mark.parametrize("seed", [-1, 2**62, 1.5, True, "3"])
def test_a_bad_seed_is_refused_naming_the_field(seed: object) -> None:
    with pytest.raises(ValidationError, match="seed"):
        JobCreate.model_validate({**job_body(["a"]), "seed": seed})
    assert JobCreate.model_validate({**job_body(["a"]), "seed": 2**62 - 1}).seed == 2**62 - 1
