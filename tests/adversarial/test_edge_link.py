"""The edge's side of revocation and registration (security review 2026-11-29: M5, L7; issue item 10):
sessions the control plane lists are closed and refused, and an edge keeps its own credential so a
restart can register its name again while the shared secret alone cannot."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from device_client import EdgeConnection
from edge_server import EdgeServer
from edge_server.control import ControlPlaneLink
from splitft.compress import parse_codecs
from splitft.errors import NotFound, PermissionDenied, Unavailable
from splitft.local.launch import ControlProcess
from splitft.v1 import dataplane_pb2 as pb
from tests.support.control_fixtures import EDGE_SECRET, OPERATOR_KEY


def _open(edge: EdgeServer, session_id: str) -> None:
    edge.sessions.open(
        "llama",
        session_id=session_id,
        device_layers=1,
        head_layers=1,
        codecs=parse_codecs("raw"),
        lora_config=None,
        seed=0,
    )


@pytest.fixture
def revocable(edge: EdgeServer) -> Iterator[EdgeServer]:
    """The shared edge, its revoked list emptied again afterwards."""
    yield edge
    edge.sessions.revoke([])


def test_revoked_sessions_are_closed_and_refused(revocable: EdgeServer, conn: EdgeConnection) -> None:
    sessions = revocable.sessions
    _open(revocable, "rev-open")
    _open(revocable, "rev-kept")
    assert sessions.revoke(["rev-open", "rev-never-opened"]) == ["rev-open"]
    with pytest.raises(NotFound):
        sessions.get("rev-open")
    sessions.get("rev-kept")  # not on the list: untouched
    with pytest.raises(PermissionDenied, match="'rev-open' was revoked by the control plane"):
        _open(revocable, "rev-open")
    request = pb.OpenSessionRequest(
        model="llama", device_layers=1, head_layers=1, session_id="rev-never-opened"
    )
    with pytest.raises(PermissionDenied, match="revoked by the control plane"):
        conn.call("OpenSession", request)  # over gRPC: PERMISSION_DENIED
    sessions.revoke([])  # the list is the control plane's whole current one: an empty list lifts it
    _open(revocable, "rev-open")
    sessions.close("rev-open")
    sessions.close("rev-kept")


@pytest.fixture(scope="module")
def control(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlProcess]:
    data = tmp_path_factory.mktemp("control")
    with ControlProcess(data, operator_key=OPERATOR_KEY, edge_secret=EDGE_SECRET) as process:
        yield process


def _link(
    control: ControlProcess, credential_file: Path | None, address: str = "127.0.0.1:7001"
) -> ControlPlaneLink:
    return ControlPlaneLink(
        control.url,
        EDGE_SECRET,
        name="edge-restarts",
        address=address,
        models=["llama"],
        max_sessions=2,
        credential_file=credential_file,
    )


def test_a_restarted_edge_registers_its_name_again_with_its_stored_credential(
    control: ControlProcess, tmp_path: Path
) -> None:
    path = tmp_path / "state" / "edge-credential"
    first = _link(control, path).register()
    assert path.read_text().strip() == first.credential
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = _link(control, path, address="127.0.0.1:7002").register()  # the restart
    assert again.edge_id == first.edge_id and again.credential != first.credential
    assert path.read_text().strip() == again.credential
    with pytest.raises(Unavailable, match="409 .*already registered"):
        _link(control, None, address="evil.example:1").register()  # the shared secret alone
    link = _link(control, path)
    link.registration = again
    seen: list[list[str]] = []
    assert link.heartbeat(0, seen.append) == [] and seen == [[]]


def _lost_answer(control: ControlProcess, link: ControlPlaneLink, bearer_token: str) -> None:
    """What a registration whose answer was lost leaves behind: the edge kept the credential it
    proposed (`.next`), the control plane committed it, the edge never heard back."""
    proposed, _ = link._next_credential()
    body = {**link.body, "credential": proposed}
    answer = httpx.post(
        control.url + "/v1/edges/register", json=body, headers={"Authorization": f"Bearer {bearer_token}"}
    )
    assert answer.status_code == 200 and answer.json()["credential"] == proposed  # ... and dropped


def test_a_registration_whose_answer_was_lost_is_retried_as_this_edge(
    control: ControlProcess, tmp_path: Path
) -> None:
    path = tmp_path / "edge-credential"
    first = _link(control, path)
    first.body["name"] = "edge-lost-answers"
    _lost_answer(control, first, EDGE_SECRET)  # its very first registration, with the shared secret
    assert not path.exists() and path.with_name(path.name + ".next").is_file()
    restarted = _link(control, path)  # a new process: it knows only what the files hold
    restarted.body["name"] = "edge-lost-answers"
    registration = restarted.register()  # not 409 "already registered": it proves it is that edge
    assert path.read_text().strip() == registration.credential
    assert not path.with_name(path.name + ".next").exists()
    _lost_answer(control, restarted, registration.credential)  # a re-registration's answer lost too
    again = _link(control, path)
    again.body["name"] = "edge-lost-answers"
    latest = again.register()  # the stored credential was rotated out: the proposed one works
    assert latest.edge_id == registration.edge_id and latest.credential != registration.credential
    seen: list[list[str]] = []
    assert again.heartbeat(0, seen.append) == []
