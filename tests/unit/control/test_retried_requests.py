"""A device's request whose answer was lost (the control plane committed it, then died or the
connection broke) is sent again: it must change nothing more. On SQLite and PostgreSQL; plus the
SQLite settings that make an acknowledged write durable (docs/resilience.md)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import text

from splitft_control.migrate import migrated_store
from tests.support.control_fixtures import (
    EDGE_SECRET,
    OPERATOR_KEY,
    adapter_archive,
    add_device,
    app_on,
    bearer,
    control_settings,
    create_job,
    register_edge,
    tar_gz,
)

GZIP = {"Content-Type": "application/gzip"}
OPERATOR = bearer(OPERATOR_KEY)


@pytest.fixture(params=["sqlite", "postgresql"])
def client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestClient]:
    yield from app_on(request.param, tmp_path)


def _running(client: TestClient, device: str = "phone") -> tuple[dict[str, str], dict[str, Any]]:
    register_edge(client, "edge-a")
    headers = bearer(add_device(client, device))
    create_job(client, [device])
    assignment = client.get("/v1/assignments/next", headers=headers)
    assert assignment.status_code == 200, assignment.text
    return headers, assignment.json()


def _job(client: TestClient, job_id: str) -> dict[str, Any]:
    return client.get(f"/v1/jobs/{job_id}", headers=OPERATOR).json()


def test_a_resent_metrics_report_stores_each_step_once(client: TestClient) -> None:
    headers, assignment = _running(client)
    url = f"/v1/sessions/{assignment['session_id']}/metrics"
    first = [{"step": 1, "loss": 0.9}, {"step": 2, "loss": 0.8}]
    assert client.post(url, json={"points": first}, headers=headers).status_code == 204
    # The agent kept points 1 and 2 (no answer came) and sends them again with point 3.
    again = [*first, {"step": 3, "loss": 0.7}]
    assert client.post(url, json={"points": again}, headers=headers).status_code == 204
    assert client.post(url, json={"points": again}, headers=headers).status_code == 204
    points = client.get(f"/v1/jobs/{assignment['job_id']}/metrics", headers=OPERATOR).json()
    assert [(p["step"], p["loss"]) for p in points["sessions"][0]["points"]] == [(1, 0.9), (2, 0.8), (3, 0.7)]


def test_a_repeated_upload_is_acknowledged_again_and_changes_nothing(client: TestClient) -> None:
    headers, assignment = _running(client)
    url = f"/v1/sessions/{assignment['session_id']}/complete"
    upload = adapter_archive()
    assert client.post(url, content=upload, headers=headers | GZIP).status_code == 204
    before = _job(client, assignment["job_id"])
    assert before["state"] == "succeeded"
    assert client.post(url, content=upload, headers=headers | GZIP).status_code == 204  # the retry
    assert _job(client, assignment["job_id"]) == before
    stored = client.get(f"/v1/jobs/{assignment['job_id']}/adapters/phone", headers=OPERATOR)
    assert stored.content == upload
    other = tar_gz({"adapter_config.json": b'{"r": 8}', "adapter_model.safetensors": b"\1" * 64})
    refused = client.post(url, content=other, headers=headers | GZIP)
    assert refused.status_code == 409 and refused.json()["detail"] == "session is succeeded, not running"
    assert client.get(f"/v1/jobs/{assignment['job_id']}/adapters/phone", headers=OPERATOR).content == upload


def test_a_repeated_failure_report_is_acknowledged_again(client: TestClient) -> None:
    headers, assignment = _running(client)
    url = f"/v1/sessions/{assignment['session_id']}/fail"
    assert client.post(url, json={"reason": "out of memory"}, headers=headers).status_code == 204
    assert client.post(url, json={"reason": "out of memory"}, headers=headers).status_code == 204
    other = client.post(url, json={"reason": "something else"}, headers=headers)
    assert other.status_code == 409, other.text
    job = _job(client, assignment["job_id"])
    assert job["state"] == "failed" and job["reason"] == "device reported: out of memory"


def test_sqlite_commits_reach_the_disk_before_the_answer(tmp_path: Path) -> None:
    """WAL, and synchronous=FULL on every connection (not the build's default): an acknowledged
    write is in the WAL file, synced, so neither a killed process nor a power cut loses it."""
    client = next(app_on("sqlite", tmp_path))
    engine = client.app.state.control.store.engine  # type: ignore[attr-defined]
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL
    lighter = migrated_store(control_settings(tmp_path / "normal", sqlite_synchronous="normal"))
    with lighter.engine.connect() as conn:
        assert conn.execute(text("PRAGMA synchronous")).scalar() == 1  # NORMAL, when asked for
    with pytest.raises(ValidationError, match="sqlite_synchronous"):
        control_settings(tmp_path, sqlite_synchronous="off")  # OFF would lose commits to a killed process


def test_an_edge_may_name_its_next_credential_but_only_a_strong_one(client: TestClient) -> None:
    """So a registration whose answer was lost can be retried as that edge (edge_server/control.py)."""
    body: dict[str, Any] = {"name": "edge-n", "address": "127.0.0.1:7001", "models": ["tiny-bert"]}
    for weak in ("sfe_short", "sfk_" + "a" * 43, "sfe_" + "a" * 42, "sfe_" + "a" * 42 + "!"):
        refused = client.post(
            "/v1/edges/register", json=body | {"credential": weak}, headers=bearer(EDGE_SECRET)
        )
        assert refused.status_code == 422, (weak, refused.text)
    chosen = "sfe_" + "x" * 43
    answer = client.post(
        "/v1/edges/register", json=body | {"credential": chosen}, headers=bearer(EDGE_SECRET)
    )
    assert answer.status_code == 200 and answer.json()["credential"] == chosen
    again = client.post("/v1/edges/register", json=body | {"credential": chosen}, headers=bearer(chosen))
    assert again.status_code == 200 and again.json()["id"] == answer.json()["id"]  # the retry, as itself
    beat = client.post(
        f"/v1/edges/{answer.json()['id']}/heartbeat", json={"active_sessions": 0}, headers=bearer(chosen)
    )
    assert beat.status_code == 200, beat.text
