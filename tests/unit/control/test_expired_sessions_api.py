"""Edges report the sessions their TTL expired (`expired_sessions` in the heartbeat), on SQLite and
PostgreSQL: a session open on that edge whose device went silent fails with a clear reason and its
independent job with it; the device, if it comes back, gets a 409 saying why. A session whose device
reported since the edge's previous heartbeat is left to resume, another edge's sessions and unknown
ids are ignored, and malformed reports are 422 with their reason."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from splitft.jobs.resume import MAX_EXPIRED_PER_HEARTBEAT
from splitft_control.app import create_app
from tests.support.control_fixtures import (
    OPERATOR_KEY,
    add_device,
    bearer,
    control_settings,
    create_job,
    postgres_database,
    postgres_unreachable_reason,
    register_edge,
)

OPERATOR = bearer(OPERATOR_KEY)
SILENT = "its device went silent: the edge expired the session after 2 s without a call from it"


@pytest.fixture(params=["sqlite", "postgresql"])
def client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestClient]:
    """The app (no scheduler thread), on both databases."""
    if request.param == "sqlite":
        yield TestClient(create_app(control_settings(tmp_path)))
        return
    reason = postgres_unreachable_reason()
    if reason is not None:
        pytest.skip(reason)
    with postgres_database() as url:
        app = create_app(control_settings(tmp_path, db_url=url))
        yield TestClient(app)
        app.state.control.store.engine.dispose()


def beat(client: TestClient, edge: dict[str, Any], expired: list[Any] | None = None, **extra: Any) -> Any:
    body: dict[str, Any] = {"active_sessions": 0, **extra}
    if expired is not None:
        body["expired_sessions"] = expired
    return client.post(f"/v1/edges/{edge['id']}/heartbeat", json=body, headers=bearer(edge["credential"]))


def job_of(client: TestClient, job_id: str) -> dict[str, Any]:
    response = client.get(f"/v1/jobs/{job_id}", headers=OPERATOR)
    assert response.status_code == 200, response.text
    return response.json()


def running_session(client: TestClient, device: str) -> str:
    response = client.get("/v1/assignments/next", headers=bearer(device))
    assert response.status_code == 200, response.text
    return response.json()["session_id"]


def test_an_expired_session_fails_its_independent_job_and_the_device_gets_a_clear_409(
    client: TestClient,
) -> None:
    edge = register_edge(client, "edge-a")
    phone = add_device(client, "phone")
    job = create_job(client, ["phone"])
    session_id = running_session(client, phone)
    assert beat(client, edge).status_code == 200  # the device was last heard before this beat
    answer = beat(client, edge, [session_id], session_ttl_seconds=2)
    assert answer.status_code == 200, answer.text
    done = job_of(client, job["id"])
    assert done["state"] == "failed" and done["reason"] == SILENT
    assert done["sessions"][0]["state"] == "failed" and done["sessions"][0]["reason"] == SILENT
    points = {"points": [{"step": 1, "loss": 1.0}]}
    late = client.post(f"/v1/sessions/{session_id}/metrics", json=points, headers=bearer(phone))
    assert late.status_code == 409 and SILENT in late.json()["detail"]
    lost = {"reason": "NotFound: unknown session", "edge_address": "127.0.0.1:5006"}
    late = client.post(f"/v1/sessions/{session_id}/edge-lost", json=lost, headers=bearer(phone))
    assert late.status_code == 409 and "cannot be resumed" in late.json()["detail"]
    assert client.get("/v1/assignments/next", headers=bearer(phone)).status_code == 204
    assert beat(client, edge, [session_id]).status_code == 200  # reported again: nothing changes
    assert job_of(client, job["id"])["reason"] == SILENT


def test_a_device_that_reported_since_the_previous_beat_is_left_to_resume(client: TestClient) -> None:
    edge = register_edge(client, "edge-a")
    phone = add_device(client, "phone")
    job = create_job(client, ["phone"])
    session_id = running_session(client, phone)
    assert beat(client, edge).status_code == 200
    points = {"points": [{"step": 1, "loss": 1.0}]}
    sent = client.post(f"/v1/sessions/{session_id}/metrics", json=points, headers=bearer(phone))
    assert sent.status_code == 204, sent.text
    assert beat(client, edge, [session_id], session_ttl_seconds=2).status_code == 200
    assert job_of(client, job["id"])["sessions"][0]["state"] == "running"


def test_an_edge_cannot_fail_another_edges_session(client: TestClient) -> None:
    register_edge(client, "edge-a")
    phone = add_device(client, "phone")
    job = create_job(client, ["phone"])
    session_id = running_session(client, phone)  # on edge-a: the only edge when it was placed
    other = register_edge(client, "edge-bb")
    assert beat(client, other).status_code == 200
    answer = beat(client, other, [session_id, "not-a-session-here"], session_ttl_seconds=2)
    assert answer.status_code == 200, answer.text  # ignored (and logged), not refused
    assert answer.json()["status"] == "up"
    sess = job_of(client, job["id"])["sessions"][0]
    assert sess["state"] == "running" and sess["reason"] == ""


@pytest.mark.parametrize(
    ("expired", "extra", "reason"),
    [
        (["../etc"], {}, "expired_sessions[0]: session_id must be 1-128 characters"),
        (["ok", ""], {}, "expired_sessions[1]: session_id must be"),
        (["x" * 129], {}, "session_id must be 1-128 characters"),
        ([7], {}, "valid string"),
        ("abc", {}, "valid list"),
        ([f"s{i}" for i in range(MAX_EXPIRED_PER_HEARTBEAT + 1)], {}, "at most 256 items"),
        (["ok"], {"session_ttl_seconds": 0}, "greater than 0"),
        (["ok"], {"session_ttl_seconds": "2"}, "valid number"),
    ],
)
def test_malformed_expired_sessions_are_422_with_their_reason(
    client: TestClient, expired: Any, extra: dict[str, Any], reason: str
) -> None:
    edge = register_edge(client, "edge-a")
    answer = beat(client, edge, expired, **extra)
    assert answer.status_code == 422 and reason in answer.text, answer.text
    assert beat(client, edge, [f"s{i}" for i in range(MAX_EXPIRED_PER_HEARTBEAT)]).status_code == 200
