"""Revocation end to end with real processes (security review 2026-11-29: L1, L7; issue item 10):
cancelling a job or disabling a device closes its session on the edge within a few heartbeats, and
a valid token for that session no longer opens it there."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from device_client.connection import EdgeConnection
from splitft.data.stdlib_task import build_stdlib_task
from splitft.demo.sdk import default_model_dir
from splitft.errors import PermissionDenied
from splitft.local.loop import LocalLoop, write_jsonl
from splitft.security.tokens import issue_token, load_private_key
from splitft.v1 import dataplane_pb2 as pb

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
MODEL = "minilm"


def _spec(device: str, steps: int) -> dict:
    return {
        "name": f"revoke-{device}",
        "model": MODEL,
        "device_layers": 2,
        "head_layers": 1,
        "lora": {"r": 4, "lora_alpha": 8, "target_modules": ["query", "value"], "task_type": "SEQ_CLS"},
        "steps": steps,
        "batch_size": 4,
        "max_length": 16,
        "num_labels": 4,
        "devices": [device],
    }


def _wait_for(predicate, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)


def _training(loop: LocalLoop, device: str, data: Path) -> tuple[dict, str]:
    """Start `device` on a long job; return the job once the device has reported steps (so its
    session is open on the edge) and the device's session id."""
    credential = loop.enroll_device(device)
    job = loop.create_job(_spec(device, steps=100_000))
    loop.start_agent(credential, data, f"{MODEL}={default_model_dir()}")
    metrics = f"/v1/jobs/{job['id']}/metrics"
    _wait_for(lambda: loop.api("GET", metrics).json()["sessions"][0]["points"], f"{device} to train")
    return job, loop.job(job["id"])["sessions"][0]["id"]


def _closed_on_edge(loop: LocalLoop, session_id: str) -> bool:
    """The edge closed the session, for whatever reason it logs: revoked by its heartbeat's answer,
    or on the device's request (the agent, told by the control plane that its job ended or refused
    as disabled, may close it first; the edge refuses it afterwards all the same, which the test
    checks with a valid token)."""
    log = (loop.root / "edge-edge-a.log").read_text(errors="replace")
    flat = "".join(log.split())  # the console log handler wraps long lines
    return f"closedsession{session_id}:" in flat


def _open_with_a_valid_token(loop: LocalLoop, device: str, session_id: str) -> None:
    """OpenSession on the edge as `device` (its own mTLS identity) with a fresh token for
    `session_id` signed by the control plane's issuer key: everything a device could still hold."""
    credential = json.loads((loop.root / "devices" / f"{device}.json").read_text())
    edge = next(e for e in loop.api("GET", "/v1/edges").json() if e["name"] == "edge-a")
    key = load_private_key(loop.root / "data" / "issuer.key")
    token = issue_token(key, session=session_id, device=device, model=MODEL, edge=edge["id"])
    conn = EdgeConnection(
        edge["address"],
        ca=credential["ca_pem"].encode(),
        cert=credential["certificate_pem"].encode(),
        key=credential["key_pem"].encode(),
        token=token,
    )
    try:
        conn.wait_ready(30)
        conn.call("OpenSession", pb.OpenSessionRequest(model=MODEL, device_layers=2, session_id=session_id))
    finally:
        conn.close()


def test_cancelled_and_disabled_sessions_are_closed_and_refused_on_the_edge(tmp_path: Path) -> None:
    task = build_stdlib_task(max_per_class=8)
    data = write_jsonl(task.train, tmp_path / "train.jsonl")
    with LocalLoop(tmp_path, heartbeat_interval=0.5, heartbeat_timeout=30.0) as loop:
        loop.start_edge("edge-a", [f"{MODEL}={default_model_dir()}"])
        cancelled_job, cancelled = _training(loop, "phone-1", data)
        _, disabled = _training(loop, "phone-2", data)

        loop.api("POST", f"/v1/jobs/{cancelled_job['id']}/cancel")
        _wait_for(lambda: _closed_on_edge(loop, cancelled), "the cancelled job's session to close")
        assert not _closed_on_edge(loop, disabled)  # only what was revoked

        phone_2 = next(d for d in loop.api("GET", "/v1/devices").json() if d["name"] == "phone-2")
        loop.api("POST", f"/v1/devices/{phone_2['id']}/disable")
        _wait_for(lambda: _closed_on_edge(loop, disabled), "the disabled device's session to close")

        for device, session_id in (("phone-1", cancelled), ("phone-2", disabled)):
            with pytest.raises(PermissionDenied, match="revoked by the control plane"):
                _open_with_a_valid_token(loop, device, session_id)
