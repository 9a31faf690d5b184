"""POST /v1/sessions/{id}/edge-lost on SQLite and PostgreSQL: a device that lost its session's edge
gets the same session back on another edge (the same one only when no other fits), within the
resume bound; past it the session fails and its job follows its rules. Also the job spec's
`checkpoint_every`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from splitft_control.app import create_app
from splitft_control.schemas import JobCreate
from tests.support.control_fixtures import (
    OPERATOR_KEY,
    add_device,
    bearer,
    control_settings,
    create_job,
    job_body,
    postgres_database,
    postgres_unreachable_reason,
    register_edge,
)

OPERATOR = bearer(OPERATOR_KEY)


@pytest.fixture(params=["sqlite", "postgresql"])
def client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestClient]:
    """The app (no scheduler thread) with a resume bound of 2, on both databases."""
    if request.param == "sqlite":
        yield TestClient(create_app(control_settings(tmp_path, max_session_resumes=2)))
        return
    reason = postgres_unreachable_reason()
    if reason is not None:
        pytest.skip(reason)
    with postgres_database() as url:
        app = create_app(control_settings(tmp_path, db_url=url, max_session_resumes=2))
        yield TestClient(app)
        app.state.control.store.engine.dispose()


def ok(response: Any, code: int = 200) -> Any:
    assert response.status_code == code, response.text
    return response.json() if response.content else {}


def next_assignment(client: TestClient, credential: str) -> dict[str, Any]:
    return ok(client.get("/v1/assignments/next", headers=bearer(credential)))


def lost(client: TestClient, credential: str, assignment: dict[str, Any], code: int = 200) -> Any:
    body = {"reason": "EdgeUnreachable: gone", "edge_address": assignment["edge_address"]}
    url = f"/v1/sessions/{assignment['session_id']}/edge-lost"
    return ok(client.post(url, json=body, headers=bearer(credential)), code)


def heartbeat(client: TestClient, edge: dict[str, Any]) -> list[str]:
    url = f"/v1/edges/{edge['id']}/heartbeat"
    return ok(client.post(url, json={"active_sessions": 0}, headers=bearer(edge["credential"])))[
        "close_sessions"
    ]


def session_of(client: TestClient, job_id: str) -> dict[str, Any]:
    return ok(client.get(f"/v1/jobs/{job_id}", headers=OPERATOR))["sessions"][0]


def test_a_lost_edge_moves_the_session_to_another_edge_and_the_old_one_closes_it(client: TestClient) -> None:
    edge_a = register_edge(client, "edge-a")
    credential = add_device(client, "phone")
    job = create_job(client, ["phone"], checkpoint_every=1)
    first = next_assignment(client, credential)
    assert first["edge_address"] == "127.0.0.1:5006" and first["spec"]["checkpoint_every"] == 1
    edge_b = register_edge(client, "edge-bb")  # a free edge with more room than edge-a
    answer = lost(client, credential, first)
    assert answer["state"] == "assigned" and answer["placements"] == 2 and answer["max_resumes"] == 2
    again = next_assignment(client, credential)
    assert again["session_id"] == first["session_id"] and again["edge_address"] == "127.0.0.1:5007"
    assert again["token"] != first["token"]  # a token for the new edge
    assert heartbeat(client, edge_a) == [first["session_id"]]  # should edge-a still hold it: close it
    assert heartbeat(client, edge_b) == []
    assert edge_a["id"] in {
        e["id"] for e in ok(client.get("/v1/edges", headers=OPERATOR)) if e["status"] == "up"
    }
    sess = session_of(client, job["id"])
    assert sess["state"] == "running" and sess["attempts"] == 2


def test_the_same_edge_again_only_when_no_other_fits(client: TestClient) -> None:
    edge_a = register_edge(client, "edge-a")
    register_edge(client, "edge-bb", models=("another-model",))  # up, but cannot take it
    credential = add_device(client, "phone")
    create_job(client, ["phone"])
    first = next_assignment(client, credential)
    assert lost(client, credential, first)["state"] == "assigned"
    again = next_assignment(client, credential)
    assert again["edge_address"] == first["edge_address"]  # e.g. the edge restarted
    assert heartbeat(client, edge_a) == []  # placed back: edge-a must not refuse it now


def test_past_the_bound_the_session_fails_and_its_job_with_it(client: TestClient) -> None:
    register_edge(client, "edge-a")
    register_edge(client, "edge-bb")
    credential = add_device(client, "phone")
    job = create_job(client, ["phone"])
    placements = []
    for _ in range(2):  # max_session_resumes=2: placements 2 and 3
        assignment = next_assignment(client, credential)
        placements.append(lost(client, credential, assignment)["placements"])
    assert placements == [2, 3]
    answer = lost(client, credential, next_assignment(client, credential))
    assert answer["state"] == "failed" and answer["placements"] == 3
    assert "lost after 3 placements (SPLITFT_MAX_SESSION_RESUMES=2)" in answer["reason"]
    done = ok(client.get(f"/v1/jobs/{job['id']}", headers=OPERATOR))
    assert done["state"] == "failed" and "SPLITFT_MAX_SESSION_RESUMES" in done["reason"]
    assert client.get("/v1/assignments/next", headers=bearer(credential)).status_code == 204
    lost(client, credential, {"session_id": done["sessions"][0]["id"], "edge_address": "x"}, 409)


def test_a_federated_session_past_the_bound_misses_its_round_and_the_job_goes_on(client: TestClient) -> None:
    register_edge(client, "edge-a")
    phones = {name: add_device(client, name) for name in ("phone-1", "phone-2")}
    spec = {
        "mode": "federated",
        "steps": None,
        "federated": {"rounds": 1, "local_steps": 2, "min_devices": 1},
    }
    job = create_job(client, list(phones), **spec)
    for _ in range(3):
        answer = lost(client, phones["phone-1"], next_assignment(client, phones["phone-1"]))
    assert answer["state"] == "failed"
    assert ok(client.get(f"/v1/jobs/{job['id']}", headers=OPERATOR))["state"] == "running"


def test_a_report_for_a_session_already_moved_changes_nothing(client: TestClient) -> None:
    register_edge(client, "edge-a")
    credential = add_device(client, "phone")
    job = create_job(client, ["phone"])
    first = next_assignment(client, credential)
    answer = lost(client, credential, {**first, "edge_address": "127.0.0.1:9"})  # not its edge now
    assert answer["state"] == "running" and answer["placements"] == 1
    assert session_of(client, job["id"])["attempts"] == 1


def test_only_the_sessions_own_device_reports_and_bad_reports_are_422(client: TestClient) -> None:
    register_edge(client, "edge-a")
    credential = add_device(client, "phone")
    intruder = add_device(client, "other")
    create_job(client, ["phone"])
    assignment = next_assignment(client, credential)
    url = f"/v1/sessions/{assignment['session_id']}/edge-lost"
    good = {"reason": "x", "edge_address": assignment["edge_address"]}
    assert client.post(url, json=good, headers=bearer(intruder)).status_code == 403
    assert client.post(url, json=good).status_code == 401
    for unknown in ("nope", "a%00b"):  # NUL: no row can have it (PostgreSQL text refuses it)
        response = client.post(f"/v1/sessions/{unknown}/edge-lost", json=good, headers=bearer(credential))
        assert response.status_code == 404, response.text
    for bad in (
        {"reason": "x"},
        {**good, "reason": ""},
        {**good, "edge_address": "a\x00b"},
        {**good, "x": 1},
    ):
        response = client.post(url, json=bad, headers=bearer(credential))
        assert response.status_code == 422, (bad, response.text)
    assert next_assignment(client, credential)["edge_address"] == assignment["edge_address"]  # untouched


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"checkpoint_every": 0}, "greater than or equal to 1"),
        ({"checkpoint_every": True}, "valid integer"),
        ({"checkpoint_every": "5"}, "valid integer"),
        ({"checkpoint_every": 5, "method": "taskedge", "lora": None}, "checkpoint_every: a taskedge session"),
        (
            {
                "checkpoint_every": 1,
                "mode": "federated",
                "steps": None,
                "federated": {"rounds": 2, "local_steps": 2, "trunk_adapter": "shared"},
            },
            "sessions on a shared trunk adapter",
        ),
    ],
)
def test_checkpoint_every_is_validated_and_errors_name_it(overrides: dict[str, Any], message: str) -> None:
    body = {**job_body(["phone"]), **overrides}
    with pytest.raises(ValidationError) as caught:
        JobCreate.model_validate(body)
    assert "checkpoint_every" in str(caught.value) and message in str(caught.value)
    assert JobCreate.model_validate(job_body(["phone"])).checkpoint_every is None  # off by default
