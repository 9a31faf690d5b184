"""An offsite job end to end, with no edge anywhere: the control plane (its real routes and store,
SQLite, in process) assigns the session without an edge or a token, the real device agent trains
against the emulator it holds (not the full model) with every socket refused, and the adapter the
control plane serves loads into the full model with plain peft, its head block at the full model's
index, and is evaluated."""

from __future__ import annotations

import io
import re
import socket
import tarfile
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel, get_peft_model_state_dict
from pydantic import ValidationError
from transformers import BertForSequenceClassification

from splitft.emulator.make import build_emulator
from splitft.jobs.spec import JobCreate
from tests.support.agent_support import DATA, job_spec_json, make_bert_with_tokenizer
from tests.support.inprocess_control import InProcessControl


@pytest.fixture(scope="module")
def bert_with_tokenizer(tiny_models: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bert_with_tokenizer(tiny_models, tmp_path_factory)


def _offsite_job(**overrides: Any) -> dict[str, Any]:
    body = job_spec_json(
        name="offsite", steps=3, num_labels=3, trunk_lora=False, offsite={"emulator": "bert-emu"}
    )
    body.update(overrides)
    return body


def _refuse_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(*_args: object, **_kwargs: object) -> None:
        raise OSError("network is disabled in this test")

    for name in ("connect", "connect_ex", "bind"):
        monkeypatch.setattr(socket.socket, name, refused)
    monkeypatch.setattr(socket, "create_connection", refused)


def _unpack(archive: bytes, out: Path) -> Path:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        tar.extractall(out, filter="data")
    return out


def test_an_offsite_job_trains_with_no_edge_and_its_adapter_plugs_into_the_full_model(
    bert_with_tokenizer, tmp_path, monkeypatch
) -> None:
    emulator = tmp_path / "bert-emu"  # 4 blocks, k = 1, j = 1: the trunk's 2 blocks dropped to 1
    build_emulator(bert_with_tokenizer, emulator, device_layers=1, head_layers=1, keep=1)
    control = InProcessControl(tmp_path / "control")  # no edge is registered
    credential = control.add_device("phone-17")
    agent = control.agent(credential, {"bert-emu": emulator}, DATA)  # the device has no full model
    job_id = control.create_job(_offsite_job())
    session = control.job(job_id)["sessions"][0]
    assert session["state"] == "assigned", session  # placed at once, on no edge
    _refuse_network(monkeypatch)  # the agent's control-plane calls stay in process (TestClient)
    assert agent.run_once() is not None
    job = control.job(job_id)
    assert job["state"] == "succeeded", job

    adapter = _unpack(control.get(f"/v1/jobs/{job_id}/adapters/phone-17").content, tmp_path / "adapter")
    monkeypatch.undo()
    full = BertForSequenceClassification.from_pretrained(str(bert_with_tokenizer), num_labels=3)
    plugged = PeftModel.from_pretrained(full, str(adapter))
    layers = {
        k.split("encoder.layer.")[1].split(".")[0]
        for k in get_peft_model_state_dict(plugged)
        if "encoder.layer." in k
    }
    assert layers == {"0", "3"}  # the head block is the full model's block 3 (the emulator's 2)
    batch = {"input_ids": torch.randint(5, 40, (4, 10)), "labels": torch.tensor([0, 1, 2, 0])}
    plugged.eval()
    with torch.no_grad():
        loss = float(plugged(**batch).loss)
        with plugged.disable_adapter():
            base = float(plugged(**batch).loss)
    assert loss != base and loss == loss  # the trained adapter (and its head) act on the full model


def test_the_assignment_of_an_offsite_job_names_no_edge_and_no_token(bert_with_tokenizer, tmp_path) -> None:
    control = InProcessControl(tmp_path / "control")
    credential = control.add_device("phone-17")
    control.create_job(_offsite_job())
    from device_client.agent.control_client import ControlPlaneClient

    client = ControlPlaneClient(credential, http=control.client)
    assignment, _ = client.next_assignment()
    assert assignment is not None and assignment.spec.offsite is not None
    assert (assignment.edge_address, assignment.token) == ("", "")


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"trunk_lora": True}, "set trunk_lora false"),
        ({"checkpoint_every": 2}, "checkpoint_every is for split sessions"),
        ({"method": "taskedge", "lora": None}, 'trains LoRA (method "lora") in mode "independent"'),
        ({"offsite": {"emulator": "../etc"}}, "String should match pattern"),
        ({"offsite": {}}, "Field required"),
    ],
)
def test_bad_offsite_specs_are_refused_with_the_reason(overrides, reason) -> None:
    body = {k: v for k, v in _offsite_job(**overrides).items() if v is not None}
    with pytest.raises(ValidationError, match=re.escape(reason)):
        JobCreate.model_validate(body)


def test_the_rest_api_refuses_a_bad_offsite_job_with_422(tmp_path) -> None:
    control = InProcessControl(tmp_path / "control")
    control.add_device("phone-17")
    from tests.support.control_fixtures import OPERATOR_KEY, bearer

    response = control.client.post(
        "/v1/jobs", json=_offsite_job(trunk_lora=True), headers=bearer(OPERATOR_KEY)
    )
    assert response.status_code == 422 and "set trunk_lora false" in response.text
