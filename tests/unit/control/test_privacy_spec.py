"""The job spec's `privacy` member: the control plane refuses a bad defense with a 422 naming the field
(the same rule as the SDK's PrivacyConfig), and the agent hands the SDK the same config."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from splitft.jobs.spec import IGNORE_UNKNOWN, JobCreate
from splitft.privacy.config import PrivacyConfig
from splitft_control.app import create_app
from tests.support.control_fixtures import OPERATOR_KEY, add_device, bearer, control_settings

BASE = {
    "name": "j",
    "model": "m",
    "device_layers": 1,
    "steps": 1,
    "devices": ["dev-p"],
    "lora": {"target_modules": ["q"]},
}


def test_a_valid_privacy_member_becomes_the_sdks_config() -> None:
    privacy = {"activation_clip": 8.0, "activation_noise": 0.5, "gradient_clip": 1.0, "nopeek_weight": 0.1}
    spec = JobCreate.model_validate({**BASE, "privacy": privacy})
    assert spec.privacy is not None
    assert spec.privacy.config() == PrivacyConfig(**privacy)
    assert JobCreate.model_validate(BASE).privacy is None
    # the device reads what a newer control plane adds without refusing it
    newer = JobCreate.model_validate({**BASE, "privacy": {**privacy, "future": 1}}, context=IGNORE_UNKNOWN)
    assert newer.privacy == spec.privacy
    warmed = {"cca_weight": 1.0, "private_warmup": 40, "warmup_consistency": 1.0, "warmup_task": 0.3}
    spec = JobCreate.model_validate({**BASE, "privacy": warmed})
    assert spec.privacy is not None and spec.privacy.config() == PrivacyConfig(**warmed)
    privacy = {"withhold_gradients": True}
    withheld = JobCreate.model_validate({**BASE, "trunk_lora": False, "privacy": privacy})
    assert withheld.privacy is not None and withheld.privacy.config().withhold_gradients


@pytest.mark.parametrize(
    ("privacy", "why"),
    [
        ({"activation_clip": 0.0}, "activation_clip"),
        ({"activation_noise": -1.0, "activation_clip": 1.0}, "activation_noise"),
        ({"activation_noise": 1.0}, "privacy.activation_noise needs privacy.activation_clip"),
        ({"gradient_noise": 1.0}, "privacy.gradient_noise needs privacy.gradient_clip"),
        ({"clip_scope": "batch"}, "clip_scope"),
        ({"nopeek_tokens": 1}, "nopeek_tokens"),
        ({"nopeek_weight": "0.1"}, "nopeek_weight"),
        ({"activation_nois": 1.0}, "activation_nois"),
        ({"withhold_gradients": "yes"}, "withhold_gradients"),
        ({"head_skip": "yes"}, "head_skip"),
        ({"cca_target": 1.0, "cca_weight": 1.0}, "cca_target"),
        ({"cca_target": 0.5}, "privacy.cca_target bounds the CCA penalty"),
        ({"cca_weight": -1.0}, "cca_weight"),
        ({"private_warmup": 1.5, "cca_weight": 1.0}, "private_warmup"),
        ({"private_warmup": 4}, "privacy.private_warmup trains on the penalties alone"),
        ({"warmup_consistency": 1.0, "cca_weight": 1.0}, "privacy.warmup_consistency acts during"),
        ({"warmup_task": 1.0, "cca_weight": 1.0}, "privacy.warmup_task needs privacy.private_warmup > 0"),
        ({"warmup_task": -1.0, "cca_weight": 1.0, "private_warmup": 4}, "warmup_task"),
        ({"warmup_task": "1", "cca_weight": 1.0, "private_warmup": 4}, "warmup_task"),
        ({"withhold_gradients": True, "gradient_clip": 1.0}, "privacy.withhold_gradients sends no gradient"),
        ({"withhold_gradients": True}, "privacy.withhold_gradients: the trunk's adapter"),
    ],
)
def test_bad_privacy_is_a_422_naming_the_field(privacy: dict, why: str, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=why):
        JobCreate.model_validate({**BASE, "privacy": privacy})
    client = TestClient(create_app(control_settings(tmp_path)))
    add_device(client, "dev-p")
    response = client.post("/v1/jobs", json={**BASE, "privacy": privacy}, headers=bearer(OPERATOR_KEY))
    assert response.status_code == 422, response.text
    assert why in response.text
