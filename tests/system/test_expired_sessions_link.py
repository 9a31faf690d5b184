"""The edge's `ControlPlaneLink` reports the sessions its TTL expired to the real control-plane app
(in process: a `TestClient` is the link's HTTP client): the control plane fails a running session of
an independent job, a report is bounded per heartbeat (the rest go in the next ones), and one the
control plane refuses (422) is dropped rather than sent with every heartbeat after it."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from edge_server.control import ControlPlaneLink
from splitft.errors import Unavailable
from splitft.jobs.resume import MAX_EXPIRED_PER_HEARTBEAT
from splitft_control.app import create_app
from tests.support.control_fixtures import (
    EDGE_SECRET,
    MODEL,
    OPERATOR_KEY,
    add_device,
    bearer,
    control_settings,
    create_job,
)


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    return TestClient(create_app(control_settings(tmp_path)))


@pytest.fixture
def link(client: TestClient) -> ControlPlaneLink:
    link = ControlPlaneLink(
        "http://testserver",
        EDGE_SECRET,
        name="edge-a",
        address="127.0.0.1:5006",
        models=[MODEL],
        max_sessions=4,
        http=client,
        insecure=True,
        session_ttl=2.0,
    )
    link.register()
    return link


def test_a_reported_expiry_fails_the_running_session_and_its_job(
    client: TestClient, link: ControlPlaneLink
) -> None:
    phone = add_device(client, "phone")
    job = create_job(client, ["phone"])
    session_id = client.get("/v1/assignments/next", headers=bearer(phone)).json()["session_id"]
    link.heartbeat(1)  # the device was last heard before this beat
    link.note_expired([session_id])
    link.heartbeat(0)
    assert link._expired_to_report() == []  # answered: not reported again
    done = client.get(f"/v1/jobs/{job['id']}", headers=bearer(OPERATOR_KEY)).json()
    assert done["state"] == "failed"
    assert done["reason"].startswith("its device went silent: the edge expired the session after 2 s")


def test_reports_are_bounded_per_heartbeat_and_a_refused_one_is_dropped(link: ControlPlaneLink) -> None:
    link.note_expired([f"s{i}" for i in range(MAX_EXPIRED_PER_HEARTBEAT + 44)])
    link.heartbeat(0)  # unknown to the control plane: ignored, the heartbeat answered
    assert link._expired_to_report() == [
        f"s{i}" for i in range(MAX_EXPIRED_PER_HEARTBEAT, MAX_EXPIRED_PER_HEARTBEAT + 44)
    ]
    link.heartbeat(0)
    assert link._expired_to_report() == []
    link.note_expired(["bad id"])  # never an edge session id; refused rather than failing every beat
    with pytest.raises(Unavailable, match="422"):
        link.heartbeat(0)
    assert link._expired_to_report() == []
    link.heartbeat(0)
