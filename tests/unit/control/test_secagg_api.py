"""The secure-aggregation routes over REST (SQLite and PostgreSQL): a round of two devices end to end
through /secagg/key, /secagg/members and /secagg/masked, and every bad request answered 4xx with its
reason (wrong sizes, a duplicate key, an upload before the keys, plain uploads of a secure job)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from splitft.federated import fedavg
from splitft.federated.fixedpoint import Layout
from splitft.federated.secagg import generate_private_key, mask_update, public_bytes
from tests.support.control_fixtures import (
    OPERATOR_KEY,
    adapter_archive,
    add_device,
    app_on,
    bearer,
    create_job,
    register_edge,
)
from tests.unit.control.test_federated_store import CONFIG, tensors_of

OCTETS = {"Content-Type": "application/octet-stream"}
STATES = {
    "laptop": {"w": np.array([0.5, -1.25, 3.0], np.float32)},
    "phone": {"w": np.array([1.5, 0.25, -2.0], np.float32)},
}


@pytest.fixture(params=["sqlite", "postgresql"])
def client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestClient]:
    yield from app_on(request.param, tmp_path)


def _round(client: TestClient) -> tuple[str, dict[str, dict[str, Any]]]:
    """A secure job of two devices whose sessions the devices have picked up."""
    register_edge(client, "edge-a")
    creds = {name: bearer(add_device(client, name)) for name in STATES}
    federated = {"rounds": 1, "local_steps": 2, "min_devices": 2, "secure_aggregation": True}
    job = create_job(client, list(STATES), steps=None, mode="federated", federated=federated)
    devices = {}
    for name, headers in creds.items():
        assignment = client.get("/v1/assignments/next", headers=headers).json()
        devices[name] = {"headers": headers, "sid": assignment["session_id"], "key": generate_private_key()}
    return job["id"], devices


def _key_body(device: dict[str, Any], name: str, **changes: Any) -> dict[str, Any]:
    body = {
        "public_key": base64.b64encode(public_bytes(device["key"])).decode(),
        "layout": Layout.of_state(STATES[name]).to_json(),
        "adapter_config": CONFIG,
        "examples": 10 if name == "laptop" else 30,
    }
    return {**body, **changes}


def _post_key(client: TestClient, device: dict[str, Any], body: dict[str, Any]) -> Any:
    return client.post(f"/v1/sessions/{device['sid']}/secagg/key", json=body, headers=device["headers"])


def _masked(client: TestClient, device: dict[str, Any], name: str) -> bytes:
    found = client.get(f"/v1/sessions/{device['sid']}/secagg/members", headers=device["headers"])
    assert found.status_code == 200, found.text
    body = found.json()
    members = {m["device"]: base64.b64decode(m["public_key"]) for m in body["members"]}
    weight = _key_body(device, name)["examples"]
    update = mask_update(
        STATES[name], weight, me=name, private=device["key"], members=members, context=body["context"]
    )
    return update.to_bytes()


def _upload(client: TestClient, device: dict[str, Any], data: bytes) -> Any:
    headers = {**device["headers"], **OCTETS}
    return client.post(f"/v1/sessions/{device['sid']}/secagg/masked", content=data, headers=headers)


def _refused(response: Any, code: int, reason: str) -> None:
    assert response.status_code == code, response.text
    assert reason in response.json()["detail"], response.json()


def test_a_secure_round_over_rest_sums_to_fedavg(client: TestClient) -> None:
    job_id, devices = _round(client)
    for name, device in devices.items():
        assert _post_key(client, device, _key_body(device, name)).status_code == 204
    masked = {name: _masked(client, device, name) for name, device in devices.items()}
    for name, device in devices.items():
        assert _upload(client, device, masked[name]).status_code == 204
    result = client.get(f"/v1/jobs/{job_id}/adapter", headers=bearer(OPERATOR_KEY))
    assert result.status_code == 200, result.text
    expected = fedavg([STATES["laptop"], STATES["phone"]], [10.0, 30.0])
    np.testing.assert_allclose(tensors_of(result.content)["w"], expected["w"], rtol=0, atol=1e-6)
    rounds = client.get(f"/v1/jobs/{job_id}/rounds", headers=bearer(OPERATOR_KEY)).json()
    assert rounds[0]["participants"] == ["laptop", "phone"] and rounds[0]["bytes_up"] == 2 * 3 * 8
    _refused(
        client.get(f"/v1/jobs/{job_id}/adapters/phone", headers=bearer(OPERATOR_KEY)), 409, "never holds"
    )


def test_bad_secure_aggregation_requests_get_a_4xx_with_the_reason(client: TestClient) -> None:
    _, devices = _round(client)
    laptop, phone = devices["laptop"], devices["phone"]
    _refused(_upload(client, laptop, b"\0" * 24), 409, "uploads before its key")
    members = client.get(f"/v1/sessions/{laptop['sid']}/secagg/members", headers=laptop["headers"])
    _refused(members, 409, "has not posted its public key")
    plain = {**laptop["headers"], "Content-Type": "application/gzip"}
    complete = client.post(
        f"/v1/sessions/{laptop['sid']}/complete?examples=3", content=adapter_archive(), headers=plain
    )
    _refused(complete, 409, "takes no plain adapter")
    _refused(_post_key(client, laptop, _key_body(laptop, "laptop", public_key="not base64!")), 400, "base64")
    short = base64.b64encode(b"x" * 31).decode()
    _refused(
        _post_key(client, laptop, _key_body(laptop, "laptop", public_key=short)), 400, "32 raw bytes, got 31"
    )
    bad_layout = [["w", [3], "int8"]]
    _refused(
        _post_key(client, laptop, _key_body(laptop, "laptop", layout=bad_layout)), 400, "dtype must be one of"
    )
    not_lora = {**CONFIG, "peft_type": "PREFIX_TUNING"}
    _refused(
        _post_key(client, laptop, _key_body(laptop, "laptop", adapter_config=not_lora)), 400, "peft_type"
    )
    assert _post_key(client, laptop, _key_body(laptop, "laptop", examples=0)).status_code == 422
    assert _post_key(client, laptop, _key_body(laptop, "laptop")).status_code == 204
    _refused(_post_key(client, laptop, _key_body(laptop, "laptop")), 409, "already posted its key")
    waiting = client.get(f"/v1/sessions/{laptop['sid']}/secagg/members", headers=laptop["headers"])
    assert waiting.status_code == 204 and waiting.headers["Retry-After"] == "1"
    _refused(_upload(client, laptop, b"\0" * 24), 409, "not fixed yet")
    other = client.get(f"/v1/sessions/{laptop['sid']}/secagg/members", headers=phone["headers"])
    _refused(other, 403, "another device")
    assert _post_key(client, phone, _key_body(phone, "phone")).status_code == 204
    _refused(_upload(client, laptop, b"\0" * 16), 400, "is 24 bytes (3 uint64), got 16")
    _refused(_upload(client, laptop, b""), 400, "empty masked update")
    assert _upload(client, laptop, _masked(client, laptop, "laptop")).status_code == 204
    _refused(_upload(client, laptop, b"\0" * 24), 409, "session is succeeded")


def test_a_masked_update_over_the_adapter_limit_is_413(tmp_path: Path) -> None:
    from splitft_control.app import create_app
    from tests.support.control_fixtures import control_settings

    client = TestClient(create_app(control_settings(tmp_path, max_adapter_bytes=64)))
    _, devices = _round(client)
    laptop = devices["laptop"]
    response = _upload(client, laptop, b"\0" * 65)
    assert response.status_code == 413 and "SPLITFT_MAX_ADAPTER_BYTES" in response.json()["detail"]
