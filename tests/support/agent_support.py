"""Shared pieces of the device agent's unit tests: a credential, job and assignment JSON, a mock
control plane, and a tiny BERT with a tokenizer.

The control plane is an `httpx.MockTransport` here, and ONLY in these unit tests: they pin the
device side of the REST contract (paths, headers, bodies, error mapping) quickly and without a
server. The real end-to-end test, with a real control plane, edge and agent as separate processes,
lives in tests/e2e/test_control_e2e.py. The edge in the training tests is the real in-process gRPC edge
of conftest.py (plaintext), so the training path itself is not mocked.
"""

from __future__ import annotations

import json
import shutil
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from device_client.agent import DeviceAgent, DeviceCredential
from device_client.agent.datasets import TextExample
from splitft.security.tokens import generate_issuer_key, issue_token

CP = "http://127.0.0.1:8000"  # loopback: plaintext to another host needs insecure=True


def credential(**overrides: Any) -> DeviceCredential:
    values: dict[str, Any] = {
        "control_plane": CP + "/",
        "device_id": "dev-1",
        "device_name": "phone-17",
        "credential": "sfd_secret-credential",
        "certificate_pem": "-----BEGIN CERTIFICATE-----\n...",
        "key_pem": "-----BEGIN PRIVATE KEY-----\n...",
        "ca_pem": "-----BEGIN CERTIFICATE-----\nca",
    }
    values.update(overrides)
    return DeviceCredential(**values)


def job_spec_json(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "job",
        "model": "bert",
        "device_layers": 1,
        "head_layers": 1,
        "lora": {"r": 4, "lora_alpha": 8, "target_modules": ["query", "value"], "task_type": "SEQ_CLS"},
        "steps": 4,
        "batch_size": 4,
        "max_length": 16,
        "devices": ["phone-17"],
    }
    body.update(overrides)
    return body


@dataclass
class FakeControlPlane:
    """Records what the agent sends; hands out `assignments` in order, then 204 with Retry-After."""

    assignments: list[dict[str, Any]] = field(default_factory=list)
    status_for: Callable[[httpx.Request], int | None] = lambda req: None
    calls: list[tuple[str, str]] = field(default_factory=list)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    uploads: dict[str, bytes] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    edge_lost: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (session, report)
    # The answer to /edge-lost (it may queue the session's next assignment first).
    on_edge_lost: Callable[[str, dict[str, Any]], dict[str, Any]] = lambda sid, report: {
        "state": "waiting",
        "placements": 2,
        "max_resumes": 3,
    }
    initial_adapters: dict[str, bytes] = field(default_factory=dict)  # federated: GET .../initial-adapter

    def __call__(self, req: httpx.Request) -> httpx.Response:
        self.calls.append((req.method, req.url.path))
        assert req.headers["authorization"] == "Bearer sfd_secret-credential"
        forced = self.status_for(req)
        if forced is not None:
            return httpx.Response(forced, json={"detail": "forced"})
        parts = req.url.path.split("/")
        if req.url.path == "/v1/assignments/next":
            if not self.assignments:
                return httpx.Response(204, headers={"Retry-After": "0"})
            return httpx.Response(200, json=self.assignments.pop(0))
        if parts[-1] == "metrics":
            self.metrics.extend(json.loads(req.content)["points"])
        elif parts[-1] == "complete":
            assert req.headers["content-type"] == "application/gzip"
            self.uploads[parts[-2]] = req.content
        elif parts[-1] == "initial-adapter":
            return httpx.Response(200, content=self.initial_adapters[parts[-2]])
        elif parts[-1] == "edge-lost":
            report = json.loads(req.content)
            self.edge_lost.append((parts[-2], report))
            return httpx.Response(200, json=self.on_edge_lost(parts[-2], report))
        elif parts[-1] == "fail":
            self.failures[parts[-2]] = json.loads(req.content)["reason"]
        return httpx.Response(204)


def make_agent(fake: FakeControlPlane, model_dirs: dict[str, Path], data: Any, **kwargs: Any) -> DeviceAgent:
    http = httpx.Client(transport=httpx.MockTransport(fake))
    return DeviceAgent(credential(), model_dirs, data, poll_interval=0.01, http=http, **kwargs)


def assignment_json(session_id: str, address: str = "127.0.0.1:1", **spec: Any) -> dict[str, Any]:
    token = issue_token(generate_issuer_key(), session=session_id, device="phone-17", model="bert")
    return {
        "session_id": session_id,
        "job_id": "j-1",
        "edge_address": address,
        "token": token,
        "spec": job_spec_json(**spec),
    }


DATA = [
    TextExample(text, i % 3) for i, text in enumerate(["abc", "hello world", "split fine tuning", "xyz"] * 3)
]


def make_bert_with_tokenizer(tiny_models: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BERT plus a small WordPiece tokenizer over its 128-id vocabulary."""
    from transformers import BertTokenizer

    directory = tmp_path_factory.mktemp("device-model") / "bert"
    shutil.copytree(tiny_models["bert"].path, directory)
    pieces = list(string.ascii_lowercase) + list(string.digits) + ["##" + c for c in string.ascii_lowercase]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *pieces]
    BertTokenizer(vocab={word: i for i, word in enumerate(vocab)}).save_pretrained(str(directory))
    return directory
