"""The device agent's poll loop and failure reporting (device_client/agent/loop.py) against a mock
control plane (tests/support/agent_support.py); the edge, where one is dialled, is the real in-process one."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from device_client.agent import DeviceAgent
from device_client.agent.loop import failure_reason
from splitft.errors import FailedPrecondition, InvalidArgument, NotFound, Unauthenticated
from tests.support.agent_support import (
    DATA,
    FakeControlPlane,
    assignment_json,
    credential,
    make_agent,
    make_bert_with_tokenizer,
)


@pytest.fixture(scope="module")
def bert_with_tokenizer(tiny_models: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bert_with_tokenizer(tiny_models, tmp_path_factory)


def test_failure_reason() -> None:
    assert failure_reason(NotFound("no model 'x'")) == "NotFound: no model 'x'"
    assert failure_reason(RuntimeError("first line\nsecret second line")) == "RuntimeError: first line"
    assert failure_reason(KeyboardInterrupt()) == "interrupted on the device"
    assert len(failure_reason(InvalidArgument("x" * 5000))) == 500


def test_no_assignment_polls_again_and_run_stops() -> None:
    fake = FakeControlPlane()
    with make_agent(fake, {}, DATA) as agent:
        assert agent.run_once() is None
        stop = threading.Event()
        timer = threading.Timer(0.2, stop.set)
        timer.start()
        summary = agent.run(stop=stop)
        timer.join()
    assert summary.handled == 0
    assert len(fake.calls) > 2 and set(fake.calls) == {("GET", "/v1/assignments/next")}


def test_revoked_credential_stops_the_agent() -> None:
    fake = FakeControlPlane(status_for=lambda req: 401)
    with make_agent(fake, {}, DATA) as agent, pytest.raises(Unauthenticated, match="forced"):
        agent.run()


def test_unknown_model_is_reported_as_a_failure(tmp_path: Path) -> None:
    fake = FakeControlPlane(assignments=[assignment_json("s-unknown", model="llama-70b")])
    with make_agent(fake, {"bert": tmp_path}, DATA) as agent:
        with pytest.raises(NotFound, match="no local directory for model 'llama-70b'"):
            agent.run_once()
        fake.assignments.append(assignment_json("s-unknown-2", model="llama-70b"))
        summary = agent.run(max_sessions=1)  # run() logs a failed session and goes on
    assert summary.failed == ["s-unknown-2"] and summary.completed == []
    assert fake.failures["s-unknown"].startswith("NotFound: this device has no local directory")
    assert fake.uploads == {}


def test_agent_without_tls_identity_refuses_to_dial(bert_with_tokenizer: Path) -> None:
    fake = FakeControlPlane(assignments=[assignment_json("s-tls")])
    http = httpx.Client(transport=httpx.MockTransport(fake))
    cred = credential(certificate_pem=None)
    with DeviceAgent(cred, {"bert": bert_with_tokenizer}, DATA, http=http) as agent:
        with pytest.raises(FailedPrecondition, match="mutual TLS"):
            agent.run_once()
    assert fake.failures["s-tls"].startswith("FailedPrecondition")


def test_a_refused_upload_is_reported_as_a_failure(edge: Any, bert_with_tokenizer: Path) -> None:
    def refuse_upload(req: httpx.Request) -> int | None:
        return 400 if req.url.path.endswith("/complete") else None

    fake = FakeControlPlane(
        assignments=[assignment_json("s-refused", edge.address)], status_for=refuse_upload
    )
    with make_agent(fake, {"bert": bert_with_tokenizer}, DATA, insecure=True) as agent:
        with pytest.raises(InvalidArgument, match="forced"):
            agent.run_once()
    assert fake.failures["s-refused"].startswith("adapter upload failed: InvalidArgument")


def test_the_sdk_does_not_load_the_agent_but_still_exports_it() -> None:
    code = (
        "import sys, device_client\n"
        "assert 'device_client.agent' not in sys.modules, 'importing the SDK loaded the agent'\n"
        "from device_client import DeviceAgent, DeviceCredential, TextExample\n"
        "from device_client import enroll, load_jsonl, run_device\n"
        "from device_client.agent import DeviceAgent as Agent\n"
        "assert DeviceAgent is Agent\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
