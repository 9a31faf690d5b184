"""The scheduler places by memory: two edges of different memory capacity, on SQLite and PostgreSQL.

Each edge's capacity is what a real edge reports: a `MemoryAccountant` over the tiny BERT the
control-plane tests use, its profile measured as `edge serve` measures it, sent by the real
`ControlPlaneLink` (registration and heartbeat) to the real REST app and store. Both edges have
slots to spare; memory decides where sessions go and why the rest wait.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from edge_server.admission import MemoryAccountant
from edge_server.control import ControlPlaneLink
from edge_server.memory import build_accountant
from edge_server.registry import ModelRegistry, load_trunk
from splitft.jobs.spec import JobCreate
from splitft.memory.estimate import SessionEstimate
from splitft.testing.tiny import TinyModel
from splitft_control.scheduler import EdgeLoad, session_need
from tests.support.control_fixtures import (
    EDGE_SECRET,
    MODEL,
    OPERATOR_KEY,
    add_device,
    app_on,
    bearer,
    create_job,
    job_body,
)

OPERATOR = bearer(OPERATOR_KEY)
SLOTS = 8  # more than any test places: slots never decide here


@pytest.fixture(scope="module")
def registry(tiny_models: dict[str, TinyModel]) -> ModelRegistry:
    return ModelRegistry({MODEL: load_trunk(MODEL, tiny_models["bert"].path)})


@pytest.fixture(scope="module")
def need(registry: ModelRegistry) -> int:
    """What one session of `job_body`'s spec needs on these edges (the scheduler's own formula)."""
    profile = build_accountant(registry, 1).profiles[MODEL]
    edge = EdgeLoad("x", "x", [MODEL], SLOTS, 0, memory_free=1 << 40, profiles={MODEL: profile})
    estimate = session_need(edge, JobCreate.model_validate(job_body(["d"])))
    assert estimate is not None and estimate > 0
    return estimate


@pytest.fixture(params=["sqlite", "postgresql"])
def client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestClient]:
    yield from app_on(request.param, tmp_path)


def _edge(
    client: TestClient, registry: ModelRegistry, name: str, limit: int
) -> tuple[ControlPlaneLink, MemoryAccountant]:
    """A registered edge whose session memory limit is `limit` bytes."""
    accountant = build_accountant(registry, limit)
    link = ControlPlaneLink(
        "http://testserver",
        EDGE_SECRET,
        name=name,
        address=f"127.0.0.1:{6000 + len(name)}",
        models=[MODEL],
        max_sessions=SLOTS,
        capacity=accountant.capacity(),
        http=client,
        insecure=True,
    )
    link.register()
    return link, accountant


def _placed(client: TestClient, job_id: str) -> list[tuple[str, str | None, str]]:
    job = client.get(f"/v1/jobs/{job_id}", headers=OPERATOR).json()
    return sorted((s["state"], s["edge_id"], s["reason"]) for s in job["sessions"])


def _schedule(client: TestClient) -> None:
    client.app.state.control.schedule_once()  # type: ignore[attr-defined]


def _job(client: TestClient, devices: list[str], **overrides: Any) -> dict[str, Any]:
    for device in devices:
        add_device(client, device)
    return create_job(client, devices, name=f"job-{devices[0]}", **overrides)


def test_sessions_go_where_their_memory_fits_and_the_rest_wait_naming_memory(
    client: TestClient, registry: ModelRegistry, need: int
) -> None:
    small_link, _ = _edge(client, registry, "edge-small", need * 3 // 2)  # one session
    big_link, _ = _edge(client, registry, "edge-big", need * 7 // 2)  # three sessions
    edges = {e["name"]: e for e in client.get("/v1/edges", headers=OPERATOR).json()}
    assert edges["edge-big"]["capacity"]["memory_limit_bytes"] == need * 7 // 2
    assert edges["edge-big"]["capacity"]["models"][MODEL]["sessions_free"] >= 1
    assert edges["edge-big"]["capacity"]["models"][MODEL]["profile"]["num_layers"] == 4
    job = _job(client, [f"d{i}" for i in range(5)])
    small, big = edges["edge-small"]["id"], edges["edge-big"]["id"]
    placed = _placed(client, job["id"])
    assert [edge for state, edge, _ in placed if state == "assigned"].count(big) == 3
    assert [edge for state, edge, _ in placed if state == "assigned"].count(small) == 1
    waiting = [reason for state, _, reason in placed if state == "waiting"]
    assert len(waiting) == 1 and waiting[0].startswith("waiting for edge memory: a session of this job needs")
    detail = client.get(f"/v1/jobs/{job['id']}", headers=OPERATOR).json()
    assert detail["state"] == "running" and detail["reason"] == waiting[0]
    client.post(f"/v1/jobs/{job['id']}/cancel", headers=OPERATOR)
    other = _job(client, ["late"])  # the cancelled sessions' memory counts no more
    assert _placed(client, other["id"])[0][:2] == ("assigned", big)
    for link in (small_link, big_link):
        link.stop()


def test_memory_the_edge_reports_in_use_is_not_placed_again(
    client: TestClient, registry: ModelRegistry, need: int
) -> None:
    _, _ = _edge(client, registry, "edge-small", need * 3 // 2)
    big_link, big = _edge(client, registry, "edge-big", need * 7 // 2)
    for i in range(3):  # sessions opened on the big edge without the control plane: its heartbeat says
        big.admit(f"outside-{i}", SessionEstimate(need, 0, 16, 128))
    big_link.heartbeat(3, capacity=big.capacity())
    edges = {e["name"]: e for e in client.get("/v1/edges", headers=OPERATOR).json()}
    assert edges["edge-big"]["capacity"]["memory_free_bytes"] == need // 2
    job = _job(client, ["d1", "d2"])
    placed = _placed(client, job["id"])
    assert placed[0][:2] == ("assigned", edges["edge-small"]["id"]) and placed[1][0] == "waiting"
    assert "edge-small" in placed[1][2] or "edge-big" in placed[1][2]
    for i in range(3):
        big.forget(f"outside-{i}")
    big_link.heartbeat(0, capacity=big.capacity())
    _schedule(client)
    assert [state for state, _, _ in _placed(client, job["id"])] == ["assigned", "assigned"]


def test_a_larger_batch_needs_more_memory_and_waits(
    client: TestClient, registry: ModelRegistry, need: int
) -> None:
    _edge(client, registry, "edge-big", need * 7 // 2)
    job = _job(client, ["wide"], batch_size=256, max_length=512)
    [(state, edge, reason)] = _placed(client, job["id"])
    assert state == "waiting" and edge is None and "waiting for edge memory" in reason
