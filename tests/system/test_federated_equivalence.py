"""A federated job of one device and one round is the independent job of the same seed.

Real parts: the control plane app on SQLite in process (its routes, store and aggregation), the
device agent's real trainer, and a real gRPC edge on loopback (tests/support/inprocess_control.py).
Both jobs draw their initialisation from the job seed and the device's data order and dropout from
(job seed, device, round 0) (`splitft.jobs.seeds`), so the device trains the same steps on the same
batches with the same masks, and the one-upload FedAvg is that upload.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support.agent_support import DATA, job_spec_json, make_bert_with_tokenizer
from tests.support.inprocess_control import InProcessControl, adapter_tensors

STEPS = 3


@pytest.fixture(scope="module")
def bert_with_tokenizer(tiny_models: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bert_with_tokenizer(tiny_models, tmp_path_factory)


def _independent(seed: int) -> dict[str, Any]:
    # lora_dropout > 0 and the tiny BERT's own dropout: the device's stream must match, not only its init
    lora = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.1, "target_modules": ["query", "value"]}
    return job_spec_json(name=f"independent-{seed}", steps=STEPS, seed=seed, lora=lora, num_labels=3)


def _federated(seed: int) -> dict[str, Any]:
    body = _independent(seed)
    body.pop("steps")
    body.update(name=f"federated-{seed}", mode="federated", federated={"rounds": 1, "local_steps": STEPS})
    return body


def _train(control: InProcessControl, agent: Any, body: dict[str, Any]) -> str:
    job_id = control.create_job(body)
    assert agent.run_once() is not None
    job = control.job(job_id)
    assert job["state"] == "succeeded", job
    return job_id


def test_one_device_one_round_federated_equals_the_independent_job(
    edge: Any, bert_with_tokenizer: Path, tmp_path: Path
) -> None:
    control = InProcessControl(tmp_path)
    control.add_edge("edge-a", edge.address, ["bert"])
    credential = control.add_device("phone-17")
    with control.agent(credential, {"bert": bert_with_tokenizer}, DATA) as agent:
        independent = _train(control, agent, _independent(seed=11))
        federated = _train(control, agent, _federated(seed=11))
        other_seed = _train(control, agent, _independent(seed=12))
    own = adapter_tensors(control.get(f"/v1/jobs/{independent}/adapters/phone-17").content)
    global_ = adapter_tensors(control.get(f"/v1/jobs/{federated}/adapter").content)
    other = adapter_tensors(control.get(f"/v1/jobs/{other_seed}/adapters/phone-17").content)
    assert sorted(own) == sorted(global_)
    assert any(".layer.1." in key for key in own)  # the trunk's adapter (trained on the edge) is in it
    for key, value in own.items():
        np.testing.assert_allclose(global_[key], value, rtol=0, atol=1e-6, err_msg=key)
    # Not vacuous: another seed trains another adapter (init, data order and dropout all follow it).
    assert max(float(np.abs(other[k] - own[k]).max()) for k in own) > 1e-3
