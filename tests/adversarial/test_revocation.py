"""Edge hijack, revocation and one-time enrollment on SQLite and PostgreSQL (security review
2026-11-29: M5, L4, L7): the shared edge secret only creates edges, operators disable and delete
devices and edges, heartbeats list the sessions an edge must close, enrollment tokens work once."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from splitft.errors import Unauthenticated
from tests.support.control_fixtures import (
    EDGE_SECRET,
    MODEL,
    OPERATOR_KEY,
    adapter_archive,
    add_device,
    app_on,
    bearer,
    create_job,
    register_edge,
)

OPERATOR = bearer(OPERATOR_KEY)


@pytest.fixture(params=["sqlite", "postgresql"])
def client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestClient]:
    yield from app_on(request.param, tmp_path)


def edge_body(name: str, address: str = "127.0.0.1:5001", max_sessions: int = 4) -> dict[str, Any]:
    return {"name": name, "address": address, "models": [MODEL], "capacity": {"max_sessions": max_sessions}}


def beat(client: TestClient, edge: dict[str, Any]) -> Any:
    return client.post(f"/v1/edges/{edge['id']}/heartbeat", json={}, headers=bearer(edge["credential"]))


def edges(client: TestClient) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in client.get("/v1/edges", headers=OPERATOR).json()}


def running(client: TestClient, device: str, edge_name: str = "edge-a") -> tuple[str, dict[str, Any]]:
    """A device whose session is running on `edge_name` (registered by the caller)."""
    credential = add_device(client, device)
    create_job(client, [device], name=f"job-{device}")
    assignment = client.get("/v1/assignments/next", headers=bearer(credential))
    assert assignment.status_code == 200, assignment.text
    return credential, assignment.json()


# --- M5: edge registration hijack ---------------------------------------------------------------------


def test_the_shared_secret_cannot_take_over_a_registered_edge(client: TestClient) -> None:
    legit = register_edge(client, "edge-1")
    evil = edge_body("edge-1", address="evil.example:50051", max_sessions=100_000)
    hijack = client.post("/v1/edges/register", json=evil, headers=bearer(EDGE_SECRET))
    assert hijack.status_code == 409, hijack.text
    assert hijack.json()["detail"].startswith("edge 'edge-1' is already registered; re-register with its own")
    assert beat(client, legit).status_code == 200  # the victim keeps its credential
    assert edges(client)["edge-1"]["address"] != "evil.example:50051"


def test_an_edge_re_registers_with_its_own_credential_only(client: TestClient) -> None:
    one, two = register_edge(client, "edge-1"), register_edge(client, "edge-2")
    stolen = client.post("/v1/edges/register", json=edge_body("edge-1"), headers=bearer(two["credential"]))
    assert stolen.status_code == 403 and stolen.json()["detail"] == "this credential belongs to another edge"
    again = client.post(
        "/v1/edges/register", json=edge_body("edge-1", "127.0.0.1:6001"), headers=bearer(one["credential"])
    )
    assert again.status_code == 200, again.text
    assert again.json()["id"] == one["id"] and again.json()["credential"] != one["credential"]
    assert beat(client, one).status_code == 401  # the old credential was rotated out
    assert beat(client, again.json()).status_code == 200
    fresh = client.post("/v1/edges/register", json=edge_body("edge-3"), headers=bearer(two["credential"]))
    assert fresh.status_code == 403, fresh.text  # an edge credential does not mint new edges


def test_a_disabled_edge_is_cut_off_and_its_sessions_move(client: TestClient) -> None:
    a = register_edge(client, "edge-a")
    _, assignment = running(client, "phone")
    register_edge(client, "edge-b")
    assert client.post(f"/v1/edges/{a['id']}/disable").status_code == 401  # operators only
    disabled = client.post(f"/v1/edges/{a['id']}/disable", headers=OPERATOR)
    assert disabled.status_code == 200 and disabled.json()["status"] == "disabled"
    refused = beat(client, a)
    assert (
        refused.status_code == 403 and refused.json()["detail"] == "edge 'edge-a' is disabled by an operator"
    )
    again = client.post("/v1/edges/register", json=edge_body("edge-a"), headers=bearer(a["credential"]))
    assert again.status_code == 403, again.text
    job = client.get(f"/v1/jobs/{assignment['job_id']}", headers=OPERATOR).json()
    assert job["sessions"][0]["edge_id"] == edges(client)["edge-b"]["id"]


def test_a_deleted_edge_frees_its_name(client: TestClient) -> None:
    a = register_edge(client, "edge-a")
    assert client.delete(f"/v1/edges/{a['id']}", headers=OPERATOR).status_code == 204
    assert client.delete(f"/v1/edges/{a['id']}", headers=OPERATOR).status_code == 404
    assert beat(client, a).status_code == 401
    fresh = register_edge(client, "edge-a")
    assert fresh["id"] != a["id"]


# --- L7 and item 10: device revocation and sessions the edge must close ----------------------------------


def test_a_disabled_device_is_cut_off_and_its_edge_told_to_close_its_session(client: TestClient) -> None:
    edge = register_edge(client, "edge-a")
    credential, assignment = running(client, "phone")
    assert beat(client, edge).json()["close_sessions"] == []
    device_id = client.get("/v1/devices", headers=OPERATOR).json()[0]["id"]
    disabled = client.post(f"/v1/devices/{device_id}/disable", headers=OPERATOR)
    assert disabled.status_code == 200, disabled.text
    assert disabled.json()["status"] == "disabled" and disabled.json()["disabled_at"]
    refused = client.get("/v1/assignments/next", headers=bearer(credential))
    assert (
        refused.status_code == 403 and refused.json()["detail"] == "device 'phone' is disabled by an operator"
    )
    url = f"/v1/sessions/{assignment['session_id']}/complete"
    upload = client.post(url, content=adapter_archive(), headers=bearer(credential))
    assert upload.status_code == 403
    assert beat(client, edge).json()["close_sessions"] == [assignment["session_id"]]
    job = client.get(f"/v1/jobs/{assignment['job_id']}", headers=OPERATOR).json()
    assert job["state"] == "failed" and job["sessions"][0]["reason"] == "device disabled by an operator"


def test_a_disabled_pending_device_cannot_enroll(client: TestClient) -> None:
    created = client.post("/v1/devices", json={"name": "phone"}, headers=OPERATOR).json()
    assert client.post(f"/v1/devices/{created['id']}/disable", headers=OPERATOR).status_code == 200
    enroll = client.post("/v1/devices/enroll", json={"enrollment_token": created["enrollment_token"]})
    assert enroll.status_code == 401, enroll.text


def test_a_device_named_by_a_job_is_kept_for_its_history(client: TestClient) -> None:
    register_edge(client, "edge-a")
    running(client, "phone")
    spare = client.post("/v1/devices", json={"name": "spare"}, headers=OPERATOR).json()
    phone = next(d for d in client.get("/v1/devices", headers=OPERATOR).json() if d["name"] == "phone")
    kept = client.delete(f"/v1/devices/{phone['id']}", headers=OPERATOR)
    assert kept.status_code == 409 and "disable it instead" in kept.json()["detail"]
    assert client.delete(f"/v1/devices/{spare['id']}", headers=OPERATOR).status_code == 204
    assert [d["name"] for d in client.get("/v1/devices", headers=OPERATOR).json()] == ["phone"]
    assert client.delete("/v1/devices/nope", headers=OPERATOR).status_code == 404


def test_a_cancelled_job_s_session_is_closed_on_its_edge(client: TestClient) -> None:
    edge = register_edge(client, "edge-a")
    _, assignment = running(client, "phone")
    assert client.post(f"/v1/jobs/{assignment['job_id']}/cancel", headers=OPERATOR).status_code == 200
    assert beat(client, edge).json()["close_sessions"] == [assignment["session_id"]]
    assert beat(client, register_edge(client, "edge-b")).json()["close_sessions"] == []  # per edge


def test_a_session_of_a_silent_edge_is_closed_there_only_once_placed_elsewhere(client: TestClient) -> None:
    """Marked down (e.g. the control plane was down a while), an edge keeps its session while it waits
    to be placed again: back on the same edge the device trains on; moved, the old edge closes it."""
    from datetime import timedelta

    store = client.app.state.control.store  # type: ignore[attr-defined]
    a = register_edge(client, "edge-a")
    _, assignment = running(client, "phone")
    session_id = assignment["session_id"]
    time.sleep(0.05)
    assert store.mark_stale_edges(timeout=timedelta(seconds=0)) == [a["id"]]
    assert beat(client, a).json()["close_sessions"] == []  # waiting: maybe back here
    assert store.place_waiting() == 1  # the heartbeat revived edge-a: the session is back on it
    assert beat(client, a).json()["close_sessions"] == []
    time.sleep(0.05)
    assert store.mark_stale_edges(timeout=timedelta(seconds=0)) == [a["id"]]
    b = register_edge(client, "edge-b")  # places the waiting session on edge-b
    job = client.get(f"/v1/jobs/{assignment['job_id']}", headers=OPERATOR).json()
    assert job["sessions"][0]["edge_id"] == b["id"]
    assert beat(client, a).json()["close_sessions"] == [session_id]
    assert beat(client, b).json()["close_sessions"] == []


def test_closures_expire_with_the_longest_token_lifetime(client: TestClient) -> None:
    """No token for a session outlives token_ttl: past it (plus grace) its closure row is dropped."""
    from datetime import timedelta

    from sqlalchemy import update

    from splitft_control.models import SessionClosure, utcnow
    from splitft_control.revocation import CLOSURE_GRACE, closures_for_edge

    state = client.app.state.control  # type: ignore[attr-defined]
    edge = register_edge(client, "edge-a")
    _, assignment = running(client, "phone")
    client.post(f"/v1/jobs/{assignment['job_id']}/cancel", headers=OPERATOR)
    ttl = state.settings.token_ttl
    assert closures_for_edge(state.store, edge_id=edge["id"], token_ttl=ttl) == [assignment["session_id"]]
    with state.store.tx() as s:  # as if the job had been cancelled just over ttl + grace ago
        old = utcnow() - timedelta(seconds=ttl) - CLOSURE_GRACE - timedelta(seconds=5)
        s.execute(update(SessionClosure).values(created_at=old))
    assert closures_for_edge(state.store, edge_id=edge["id"], token_ttl=ttl) == []
    with state.store.tx() as s:
        assert s.query(SessionClosure).count() == 0


# --- L4: one-time enrollment tokens under concurrency ----------------------------------------------------


def test_an_enrollment_token_works_once_even_concurrently(client: TestClient) -> None:
    store = client.app.state.control.store  # type: ignore[attr-defined]
    _, token = store.create_device(name="phone")
    racers = 6
    barrier = threading.Barrier(racers)
    wins: list[str] = []
    refusals: list[Exception] = []

    def slow_sign(name: str) -> str | None:
        time.sleep(0.3)  # widens the window between reading the token and writing the credential
        return None

    def enroll() -> None:
        barrier.wait()
        try:
            _, credential = store.enroll_device(enrollment_token=token, sign=slow_sign)
            wins.append(credential)
        except Unauthenticated as exc:
            refusals.append(exc)

    threads = [threading.Thread(target=enroll) for _ in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(wins) == 1 and len(refusals) == racers - 1, (wins, refusals)
    assert store.authenticate_device(credential=wins[0]).name == "phone"


# --- the migration that adds revocation keeps what was stored -----------------------------------------


def test_migration_0002_keeps_existing_edges_and_devices(tmp_path: Path) -> None:
    from alembic import command
    from sqlalchemy import text

    from splitft_control import migrate
    from splitft_control.store import Store, make_engine

    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    config = migrate.alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
        connection.execute(
            text(
                "INSERT INTO devices (id, name, status, created_at) VALUES ('d1', 'phone', 'enrolled', "
                "'2026-11-01 00:00:00')"
            )
        )
    migrate.upgrade(engine)
    (device,) = Store(engine).list_devices()
    assert (device.name, device.status, device.disabled_at) == ("phone", "enrolled", None)
    engine.dispose()
