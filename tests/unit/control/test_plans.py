"""Plans, device classes and split "auto" jobs in the control plane: the store on SQLite and
PostgreSQL, and the REST routes' validation."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from splitft.errors import FailedPrecondition, NotFound
from splitft.plan.choice import DeviceClass
from splitft_control.app import create_app
from splitft_control.store import Store
from tests.support.control_fixtures import (
    MODEL,
    OPERATOR_KEY,
    add_device,
    bearer,
    control_settings,
    job_body,
    register_edge,
)
from tests.support.plans import MIB, plan_file
from tests.unit.control.test_store import edge, enrolled

FAST = {"memory_bytes": 1024 * MIB, "uplink_mbps": 1000.0, "downlink_mbps": 1000.0}
SLOW = {"memory_bytes": 1024 * MIB, "uplink_mbps": 1.0, "downlink_mbps": 1.0}
TINY = {"memory_bytes": 128 * MIB, "uplink_mbps": 1000.0, "downlink_mbps": 1000.0}
AUTO = {"split": "auto", "device_layers": None}


def auto_job(store: Store, devices: list[str]) -> str:
    return store.create_job(name="auto", spec=job_body(devices, **AUTO), device_names=devices).id


def points(store: Store, job_id: str) -> dict[str, tuple[str, str | None, str]]:
    """device -> (session state, its point's name, reason)."""
    _, rows = store.get_job(job_id=job_id)
    return {d: (s.state, (s.plan_point or {}).get("name"), s.reason) for s, d in rows}


def test_auto_job_places_each_class_on_its_front_point(store: Store) -> None:
    store.register_plan(plan=plan_file())
    for name, cls in (("fast", FAST), ("slow", SLOW), ("tiny", TINY)):
        device = enrolled(store, name)
        store.set_device_class(device_id=device.id, device_class=DeviceClass(**cls))
    edge(store, "edge-a")
    job_id = auto_job(store, ["fast", "slow", "tiny"])
    assert store.place_waiting() == 3
    assert points(store, job_id) == {
        "fast": ("assigned", "k2j1-r8-raw/raw-fp32", ""),
        "slow": ("assigned", "k2j1-r8-int8/int8-fp32", ""),
        "tiny": ("assigned", "k1j0-r4-raw/raw-int8", ""),
    }
    # The point sticks to the session: a newer plan does not move a placed session.
    store.register_plan(plan=plan_file().model_copy(update={"loss_tolerance": 0.0}))
    store.place_waiting()
    assert points(store, job_id)["slow"][1] == "k2j1-r8-int8/int8-fp32"


def test_auto_sessions_wait_with_the_reason(store: Store) -> None:
    enrolled(store, "classless")
    small = enrolled(store, "small")
    store.set_device_class(device_id=small.id, device_class=DeviceClass(**{**TINY, "memory_bytes": MIB}))
    edge(store, "edge-a")
    with pytest.raises(FailedPrecondition, match="no plan is registered for model"):
        auto_job(store, ["classless"])
    store.register_plan(plan=plan_file())
    job_id = auto_job(store, ["classless", "small"])
    assert store.place_waiting() == 0
    found = points(store, job_id)
    assert found["classless"][0] == "waiting" and "has no class" in found["classless"][2]
    assert "PUT /v1/devices/" in found["classless"][2]
    assert "no measured candidate of plan" in found["small"][2] and found["small"][1] is None
    # Given a class, the device is placed on the next pass.
    classless = next(d for d in store.list_devices() if d.name == "classless")
    store.set_device_class(device_id=classless.id, device_class=DeviceClass(**FAST))
    assert store.place_waiting() == 1
    assert points(store, job_id)["classless"][:2] == ("assigned", "k2j1-r8-raw/raw-fp32")


def test_plans_are_listed_newest_first_and_read_back(store: Store) -> None:
    first = store.register_plan(plan=plan_file())
    second = store.register_plan(plan=plan_file(model="other"))
    assert [p.id for p in store.list_plans()][:2] in ([second.id, first.id], [first.id, second.id])
    assert [p.id for p in store.list_plans(model="other")] == [second.id]
    assert store.get_plan(plan_id=first.id).body["model"] == MODEL
    with pytest.raises(NotFound):
        store.get_plan(plan_id="nope")
    with pytest.raises(NotFound):
        store.set_device_class(device_id="nope", device_class=None)


# --- REST ------------------------------------------------------------------------------------------


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    return TestClient(create_app(control_settings(tmp_path)))


OPERATOR = bearer(OPERATOR_KEY)


def test_rest_auto_job_shows_each_devices_point_in_the_job_and_the_assignment(client: TestClient) -> None:
    plan = client.post("/v1/plans", json=plan_file().model_dump(mode="json"), headers=OPERATOR)
    assert plan.status_code == 201, plan.text
    assert plan.json()["candidates"] == {"measured": 3, "refused": 1}
    register_edge(client, "edge-a")
    credentials = {name: add_device(client, name) for name in ("fast", "slow")}
    devices = {d["name"]: d["id"] for d in client.get("/v1/devices", headers=OPERATOR).json()}
    for name, cls in (("fast", FAST), ("slow", SLOW)):
        answer = client.put(f"/v1/devices/{devices[name]}/class", json=cls, headers=OPERATOR)
        assert (
            answer.status_code == 200 and answer.json()["device_class"]["uplink_mbps"] == cls["uplink_mbps"]
        )
    job = client.post("/v1/jobs", json=job_body(["fast", "slow"], **AUTO), headers=OPERATOR)
    assert job.status_code == 201, job.text
    job_id = job.json()["id"]
    client.app.state.control.store.place_waiting()  # type: ignore[attr-defined]
    shown = client.get(f"/v1/jobs/{job_id}", headers=OPERATOR).json()
    by_device = {s["device"]: s["plan_point"]["name"] for s in shown["sessions"]}
    assert by_device == {"fast": "k2j1-r8-raw/raw-fp32", "slow": "k2j1-r8-int8/int8-fp32"}
    assert shown["spec"]["split"] == "auto" and shown["spec"]["device_layers"] is None
    assignment = client.get("/v1/assignments/next", headers=bearer(credentials["slow"])).json()
    assert assignment["plan_point"]["name"] == "k2j1-r8-int8/int8-fp32"
    assert assignment["spec"]["device_layers"] == 2 and assignment["spec"]["codec"] == "int8"
    assert assignment["spec"]["lora"]["r"] == 8
    listed = client.get("/v1/plans", params={"model": MODEL}, headers=OPERATOR).json()
    assert [p["id"] for p in listed] == [plan.json()["id"]]
    assert client.get(f"/v1/plans/{listed[0]['id']}", headers=OPERATOR).json()["num_layers"] == 6


@pytest.mark.parametrize(
    ("path", "method", "body", "status", "detail"),
    [
        ("/v1/plans", "post", {"model": "m"}, 422, "candidates"),
        ("/v1/devices/{id}/class", "put", {**FAST, "memory_bytes": 0}, 422, "memory_bytes"),
        ("/v1/devices/{id}/class", "put", {**FAST, "uplink_mbps": "fast"}, 422, "uplink_mbps"),
        ("/v1/devices/{id}/class", "put", {**FAST, "speed_factor": 2.0, "flops": 1e9}, 422, "not both"),
        ("/v1/devices/nope/class", "put", FAST, 404, "no device"),
        ("/v1/plans/nope", "get", None, 404, "no plan"),
        ("/v1/jobs", "post", "auto-no-plan", 409, "no plan is registered"),
    ],
)
def test_rest_refuses_bad_plans_classes_and_auto_jobs_without_a_plan(
    client: TestClient, path: str, method: str, body: object, status: int, detail: str
) -> None:
    add_device(client, "phone")
    device_id = client.get("/v1/devices", headers=OPERATOR).json()[0]["id"]
    if body == "auto-no-plan":
        body = job_body(["phone"], **AUTO)
    answer = client.request(method, path.replace("{id}", device_id), json=body, headers=OPERATOR)
    assert answer.status_code == status, answer.text
    assert detail in answer.text
    assert client.post("/v1/plans", json=plan_file().model_dump(mode="json")).status_code == 401


def test_a_device_created_with_a_class_shows_it(client: TestClient) -> None:
    created = client.post("/v1/devices", json={"name": "phone", "device_class": TINY}, headers=OPERATOR)
    assert created.status_code == 201, created.text
    listed = client.get("/v1/devices", headers=OPERATOR).json()
    assert listed[0]["device_class"]["memory_bytes"] == TINY["memory_bytes"]
    bad = client.post(
        "/v1/devices", json={"name": "p2", "device_class": {"memory_bytes": 1}}, headers=OPERATOR
    )
    assert bad.status_code == 422


def test_a_device_registers_its_own_class(client: TestClient) -> None:
    credential = add_device(client, "watch")
    assert client.put("/v1/device-class", json=TINY, headers=bearer(credential)).status_code == 204
    listed = client.get("/v1/devices", headers=OPERATOR).json()
    assert listed[0]["device_class"]["memory_bytes"] == TINY["memory_bytes"]
    assert client.put("/v1/device-class", json=TINY).status_code == 401
    assert client.put("/v1/device-class", json=TINY, headers=OPERATOR).status_code == 401  # not a device
    bad = client.put("/v1/device-class", json={**TINY, "downlink_mbps": 0}, headers=bearer(credential))
    assert bad.status_code == 422 and "downlink_mbps" in bad.text
