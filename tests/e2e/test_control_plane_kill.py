"""The control plane loses nothing (issue 17, item 4), with real processes, on SQLite and PostgreSQL.

A control plane (`splitft control serve`, HTTPS) and an edge (`splitft edge serve`, mutual TLS) run as
processes; two device agents run in this process (real HTTP and gRPC; in-process only so a progress
hook can hold one at a chosen step). Device 1 finishes its session; device 2 is held after step 1's
metrics were acknowledged; the control plane is killed with SIGKILL; device 2 trains its last steps
and tries to report and upload while nothing answers; the control plane restarts on the same store.
Everything acknowledged before the kill is there, the points made during the outage arrive once
each, the edge's heartbeats resume by themselves, and the job succeeds.

Uploads cut mid-body (the client's connection dropped, or the control plane killed while the body
streams) store nothing, and the retry stores the archive whole.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

from device_client.agent import DeviceAgent
from device_client.agent.trainer import TrainingProgress
from edge_server.control import ControlPlaneLink
from splitft.backoff import ReconnectPolicy
from splitft.errors import Unavailable
from splitft.local.launch import ControlProcess, free_port
from splitft.local.loop import LocalLoop
from tests.support.agent_support import DATA, make_bert_with_tokenizer
from tests.support.control_fixtures import (
    EDGE_SECRET,
    OPERATOR_KEY,
    bearer,
    job_body,
    postgres_database,
    postgres_unreachable_reason,
    tar_gz,
)

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
STEPS = 3
QUICK = ReconnectPolicy(base_delay_s=0.2, max_delay_s=1.0, budget_s=60.0)  # the agents' retries here


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """None: the control plane's SQLite file in its data dir; else a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield None
        return
    reason = postgres_unreachable_reason()
    if reason is not None:
        pytest.skip(reason)
    with postgres_database() as url:
        yield url


@pytest.fixture(scope="module")
def bert_dir(tiny_models: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bert_with_tokenizer(tiny_models, tmp_path_factory)


def _spec(devices: list[str]) -> dict[str, Any]:
    return {
        "name": "kill",
        "model": "bert",
        "device_layers": 1,
        "head_layers": 1,
        "lora": {"r": 4, "lora_alpha": 8, "target_modules": ["query", "value"], "task_type": "SEQ_CLS"},
        "steps": STEPS,
        "batch_size": 4,
        "max_length": 16,
        "num_labels": 3,
        "devices": devices,
    }


class Hold:
    """A progress hook that stops the agent's training after step `at` until released."""

    def __init__(self, at: int) -> None:
        self.at, self.reached, self.release, self.done = (
            at,
            threading.Event(),
            threading.Event(),
            threading.Event(),
        )

    def __call__(self, progress: TrainingProgress) -> None:
        if progress.step == self.at:
            self.reached.set()
            assert self.release.wait(60)
        if progress.step == progress.total_steps:
            self.done.set()


def _agent(loop: LocalLoop, name: str, bert_dir: Path, hold: Hold | None = None) -> DeviceAgent:
    return DeviceAgent(
        loop.enroll_device(name),
        {"bert": bert_dir},
        DATA,
        poll_interval=0.2,
        metrics_every=1,
        progress=hold,
        reconnect=QUICK,
    )


def _acknowledged(loop: LocalLoop, job_id: str) -> dict[str, Any]:
    """What the control plane answers about the job now: job, points per device, adapters, devices."""
    job = loop.job(job_id)
    metrics = loop.api("GET", f"/v1/jobs/{job_id}/metrics").json()["sessions"]
    adapters = {
        s["device"]: loop.api("GET", f"/v1/jobs/{job_id}/adapters/{s['device']}").content
        for s in job["sessions"]
        if s["has_adapter"]
    }
    return {
        "sessions": {s["device"]: (s["id"], s["edge_id"], s["attempts"]) for s in job["sessions"]},
        "points": {m["device"]: [(p["step"], p["loss"]) for p in m["points"]] for m in metrics},
        "adapters": adapters,
        "devices": sorted(d["name"] for d in loop.api("GET", "/v1/devices").json()),
        "edges": {e["name"]: e["id"] for e in loop.api("GET", "/v1/edges").json()},
    }


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)  # SQLite: naive


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)  # SQLite: naive


def _edge_heartbeat_after(loop: LocalLoop, moment: datetime, timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        edge = loop.api("GET", "/v1/edges").json()[0]
        beat = edge["last_heartbeat_at"]
        if beat and _utc(datetime.fromisoformat(beat.replace("Z", "+00:00"))) > moment:
            return edge
        time.sleep(0.2)
    raise AssertionError(f"the edge did not heartbeat the restarted control plane in {timeout} s")


def test_sigkill_mid_job_loses_nothing_acknowledged_and_the_job_completes(
    tmp_path: Path, db_url: str | None, bert_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    with LocalLoop(tmp_path, db_url=db_url, heartbeat_interval=0.5, heartbeat_timeout=6.0) as loop:
        loop.start_edge("edge-a", [f"bert={bert_dir}"])
        hold = Hold(at=2)
        first, second = _agent(loop, "phone-1", bert_dir), _agent(loop, "phone-2", bert_dir, hold)
        job = loop.create_job(_spec(["phone-1", "phone-2"]))
        assert first.run(max_sessions=1).completed  # device 1's whole session, adapter acknowledged
        outcome: dict[str, Any] = {}
        worker = threading.Thread(target=lambda: outcome.update(summary=second.run(max_sessions=1)))
        worker.start()
        assert hold.reached.wait(30)  # device 2 did step 2; the point of step 1 is acknowledged
        before = _acknowledged(loop, job["id"])
        assert before["points"]["phone-2"] and "phone-1" in before["adapters"]
        assert loop.control is not None
        loop.control.kill()  # SIGKILL
        hold.release.set()
        assert hold.done.wait(30)  # device 2 trains on: the edge does not need the control plane
        time.sleep(1.0)  # its reports and flush fail meanwhile
        restarted = datetime.now(timezone.utc)
        loop.restart_control()
        done = loop.wait_job(job["id"], timeout=60)
        worker.join(30)
        after = _acknowledged(loop, job["id"])
        edge = _edge_heartbeat_after(loop, restarted)
        first.close()  # before the control plane stops: it waits for open connections to close
        second.close()
    assert done["state"] == "succeeded", done
    assert outcome["summary"].completed == [before["sessions"]["phone-2"][0]]
    assert after["sessions"] == before["sessions"]  # same ids, same edge, never re-placed
    assert after["devices"] == before["devices"] and after["edges"] == before["edges"]
    assert after["adapters"]["phone-1"] == before["adapters"]["phone-1"]
    assert set(after["adapters"]) == {"phone-1", "phone-2"}
    for device, points in before["points"].items():
        assert after["points"][device][: len(points)] == points
    # Every step's point exactly once, those of the outage included (buffered, then sent).
    assert {d: [s for s, _ in p] for d, p in after["points"].items()} == {
        "phone-1": [1, 2, 3],
        "phone-2": [1, 2, 3],
    }
    assert edge["status"] == "up"
    warnings = " ".join(r.getMessage() for r in caplog.records)
    assert "metric points kept for later" in warnings  # the outage was seen, and waited out


# --- uploads cut mid-body ------------------------------------------------------------------------------


def _control(data_dir: Path, db_url: str | None, port: int | None = None) -> ControlProcess:
    return ControlProcess(
        data_dir, operator_key=OPERATOR_KEY, edge_secret=EDGE_SECRET, port=port, db_url=db_url
    )


def _running_session(url: str) -> tuple[dict[str, str], dict[str, Any]]:
    """An edge, an enrolled device, a job and its session taken by the device: all over REST."""
    with httpx.Client(base_url=url, timeout=30) as http:
        edge = {"name": "edge-a", "address": "127.0.0.1:7001", "models": ["tiny-bert"]}
        edge["capacity"] = {"max_sessions": 2}
        assert http.post("/v1/edges/register", json=edge, headers=bearer(EDGE_SECRET)).status_code == 200
        token = http.post("/v1/devices", json={"name": "phone"}, headers=bearer(OPERATOR_KEY)).json()
        enrolled = http.post("/v1/devices/enroll", json={"enrollment_token": token["enrollment_token"]})
        device = bearer(enrolled.json()["credential"])
        assert (
            http.post("/v1/jobs", json=job_body(["phone"]), headers=bearer(OPERATOR_KEY)).status_code == 201
        )
        assignment = http.get("/v1/assignments/next", headers=device)
        assert assignment.status_code == 200, assignment.text
        return device, assignment.json()


def _stored(url: str, job_id: str) -> tuple[str, httpx.Response]:
    with httpx.Client(base_url=url, timeout=30) as http:
        job = http.get(f"/v1/jobs/{job_id}", headers=bearer(OPERATOR_KEY)).json()
        adapter = http.get(f"/v1/jobs/{job_id}/adapters/phone", headers=bearer(OPERATOR_KEY))
    return job["sessions"][0]["state"], adapter


def _cut_upload(url: str, path: str, headers: dict[str, str], body: bytes, sent: int) -> None:
    """Send the headers and the first `sent` bytes of the body, then drop the connection."""
    host, port = url.removeprefix("http://").split(":")
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body[:sent])
        time.sleep(0.3)  # let the server read what came


def test_an_upload_cut_mid_body_stores_nothing_and_its_retry_stores_it_whole(
    tmp_path: Path, db_url: str | None
) -> None:
    archive = tar_gz({"adapter_config.json": b'{"r": 4}', "adapter_model.safetensors": os.urandom(8 << 20)})
    headers = {"Content-Type": "application/gzip"}
    port = free_port()
    control = _control(tmp_path / "data", db_url, port).start()
    try:
        device, assignment = _running_session(control.url)
        path = f"/v1/sessions/{assignment['session_id']}/complete"
        # 1. The device's connection drops halfway through the body.
        _cut_upload(control.url, path, device | headers, archive, len(archive) // 2)
        state, adapter = _stored(control.url, assignment["job_id"])
        assert state == "running" and adapter.status_code == 409, adapter.text
        # 2. The control plane is killed while the body streams in.
        reached, killed = threading.Event(), threading.Event()

        def slow_body() -> Iterator[bytes]:
            for offset in range(0, len(archive), 256 << 10):
                if offset >= len(archive) // 2 and not reached.is_set():
                    reached.set()
                    killed.wait(30)
                yield archive[offset : offset + (256 << 10)]

        failure: list[BaseException] = []

        def upload() -> None:
            try:
                httpx.post(
                    control.url + path,
                    content=slow_body(),
                    headers=device | headers | {"Content-Length": str(len(archive))},
                    timeout=30,
                )
            except httpx.HTTPError as exc:
                failure.append(exc)

        thread = threading.Thread(target=upload)
        thread.start()
        assert reached.wait(30)
        control.kill()  # SIGKILL, half the body in
        killed.set()
        thread.join(30)
        assert failure, "the upload to a killed control plane cannot have been answered"
        control = _control(tmp_path / "data", db_url, port).start()
        state, adapter = _stored(control.url, assignment["job_id"])
        assert state == "running" and adapter.status_code == 409, adapter.text
        # 3. The retry stores the archive whole.
        done = httpx.post(control.url + path, content=archive, headers=device | headers, timeout=60)
        assert done.status_code == 204, done.text
        state, adapter = _stored(control.url, assignment["job_id"])
        assert state == "succeeded" and adapter.content == archive
    finally:
        control.stop()


def test_an_edge_waits_for_a_control_plane_that_is_not_up_yet(tmp_path: Path) -> None:
    """Registration retries an unreachable control plane (jittered, bounded) instead of exiting."""
    port = free_port()
    control = _control(tmp_path / "data", None, port)
    link = ControlPlaneLink(
        control.url,
        EDGE_SECRET,
        name="edge-early",
        address="127.0.0.1:7001",
        models=["m"],
        max_sessions=1,
        register_wait_s=60,
    )
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(registration=link.register()))
    thread.start()
    time.sleep(1.0)  # a few refused connections first
    assert thread.is_alive()
    with control:
        thread.join(30)
        assert result["registration"].edge_id
    refused = ControlPlaneLink(
        control.url,
        EDGE_SECRET,
        name="edge-late",
        address="127.0.0.1:7002",
        models=["m"],
        max_sessions=1,
        register_wait_s=0.5,
    )
    with pytest.raises(Unavailable, match="unreachable"):
        refused.register()  # nothing listens any more: gives up after its budget
