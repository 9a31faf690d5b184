"""A real training session (device_client/agent/trainer.py): real in-process edge (plaintext or
mutual TLS), mock control plane only (tests/support/agent_support.py)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from device_client.agent import DeviceAgent
from device_client.agent.credentials import enroll
from device_client.agent.datasets import TextExample
from splitft.errors import FailedPrecondition, InvalidArgument
from splitft.security.tokens import generate_issuer_key, issue_token
from tests.support.agent_support import (
    CP,
    DATA,
    FakeControlPlane,
    assignment_json,
    make_agent,
    make_bert_with_tokenizer,
)


@pytest.fixture(scope="module")
def bert_with_tokenizer(tiny_models: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bert_with_tokenizer(tiny_models, tmp_path_factory)


def test_agent_trains_reports_and_uploads_reproducibly(edge: Any, bert_with_tokenizer: Path) -> None:
    spec = {"steps": 5, "schedule": {"name": "linear", "warmup_steps": 1}, "optimizer": {"lr": 0.01}}
    fake = FakeControlPlane(assignments=[assignment_json("s-train", edge.address, **spec)])
    seen: list[int] = []
    with make_agent(
        fake,
        {"bert": bert_with_tokenizer},
        DATA,
        metrics_every=2,
        insecure=True,
        progress=lambda p: seen.append(p.step),
    ) as agent:
        assert agent.run_once() == "s-train"
        fake.assignments.append(assignment_json("s-train", edge.address, **spec))
        first = fake.uploads.pop("s-train")
        assert agent.run(max_sessions=1).completed == ["s-train"]
    assert seen == [1, 2, 3, 4, 5] * 2
    assert [p["step"] for p in fake.metrics] == [2, 4, 5] * 2
    point = fake.metrics[0]
    assert point["loss"] > 0 and point["examples_per_second"] > 0 and point["bytes_sent"] > 0
    assert fake.uploads["s-train"] == first  # same session id and data: the same adapter, byte for byte
    with tarfile.open(fileobj=io.BytesIO(first), mode="r:gz") as tar:
        assert sorted(tar.getnames()) == ["adapter_config.json", "adapter_model.safetensors"]
        config = json.loads(tar.extractfile("adapter_config.json").read())  # type: ignore[union-attr]
    assert (config["r"], config["lora_alpha"], config["task_type"]) == (4, 8, "SEQ_CLS")
    assert fake.failures == {}


def test_agent_reports_bad_labels_without_the_data(edge: Any, bert_with_tokenizer: Path) -> None:
    data = [TextExample("secret text", 7)]
    fake = FakeControlPlane(assignments=[assignment_json("s-labels", edge.address)])
    with make_agent(fake, {"bert": bert_with_tokenizer}, data, insecure=True) as agent:
        with pytest.raises(InvalidArgument, match="labels >= num_labels"):
            agent.run_once()
    assert (
        "secret" not in fake.failures["s-labels"] and "labels >= num_labels (3)" in fake.failures["s-labels"]
    )


def test_enrolled_device_trains_over_mutual_tls(
    tmp_path: Path, tiny_models: Any, bert_with_tokenizer: Path
) -> None:
    """Enroll (the mock signs the CSR with the real CA code, as the control plane does), then train
    through a real mTLS edge that checks the token's device against the certificate's CN."""
    from edge_server import EdgeConfig, EdgeServer
    from splitft.security.certs import init_ca, sign_device_key
    from splitft.security.tokens import public_key_pem

    ca = init_ca(tmp_path / "ca", ["127.0.0.1"])
    issuer = generate_issuer_key()
    (tmp_path / "issuer.pub").write_bytes(public_key_pem(issuer))

    def enroll_handler(req: httpx.Request) -> httpx.Response:
        csr = x509.load_pem_x509_csr(json.loads(req.content)["csr_pem"].encode())
        cert = sign_device_key(ca.directory, "phone-17", csr.public_key())
        body = {
            "id": "d-1",
            "name": "phone-17",
            "credential": "sfd_secret-credential",
            "certificate_pem": cert.public_bytes(serialization.Encoding.PEM).decode(),
            "ca_pem": ca.ca_cert.read_text(),
        }
        return httpx.Response(200, json=body)

    with httpx.Client(transport=httpx.MockTransport(enroll_handler)) as http:
        cred = enroll(CP, "enroll-token-123", tmp_path / "device.json", http=http)
    config = EdgeConfig(
        model_dirs=[f"bert={tiny_models['bert'].path}"],
        port=0,
        certs_dir=str(ca.directory),
        token_issuer_keys=[str(tmp_path / "issuer.pub")],
    )
    server = EdgeServer(config).start()
    try:
        assignment = assignment_json("s-mtls", server.address)
        assignment["token"] = issue_token(issuer, session="s-mtls", device="phone-17", model="bert")
        fake = FakeControlPlane(assignments=[assignment])
        http = httpx.Client(transport=httpx.MockTransport(fake))
        with DeviceAgent(tmp_path / "device.json", {"bert": bert_with_tokenizer}, DATA, http=http) as agent:
            assert agent.credential == cred
            assert agent.run_once() == "s-mtls"
    finally:
        server.stop(grace=1)
    assert fake.failures == {} and "s-mtls" in fake.uploads


def test_a_model_dir_without_tokenizer_is_refused(tiny_models: Any) -> None:
    """transformers would hand back an empty tokenizer here; training on [UNK]s must not start."""
    fake = FakeControlPlane(assignments=[assignment_json("s-notok")])
    with make_agent(fake, {"bert": tiny_models["bert"].path}, DATA, insecure=True) as agent:
        with pytest.raises(FailedPrecondition, match="no tokenizer files"):
            agent.run_once()
    assert fake.failures["s-notok"].startswith("FailedPrecondition")
