"""Helpers for the adversarial edge tests: a deployment (CA, device certificates, token issuer), device
connections carrying tokens, and the check that the edge still serves other clients after an attack."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from device_client import EdgeConnection, SplitModel
from splitft.security.certs import CertPaths, init_ca, issue_device
from splitft.security.tokens import generate_issuer_key, issue_token, public_key_pem
from splitft.testing.tiny import TinyModel, lora_config_for, make_batch
from splitft.v1 import dataplane_pb2 as pb

DEVICES = ("dev-a", "dev-b", "dev-c", "bystander", "healthcheck")
FAMILY = "llama"


@dataclass
class Deployment:
    """A throw-away CA with a certificate per device in DEVICES, and one token issuer."""

    paths: CertPaths
    issuer: Any
    issuer_pub: Path

    @classmethod
    def create(cls, root: Path) -> Deployment:
        paths = init_ca(root / "ca", ["127.0.0.1", "localhost"])
        for name in DEVICES:
            issue_device(paths.directory, name)
        issuer = generate_issuer_key()
        (root / "issuer.pub").write_bytes(public_key_pem(issuer))
        return cls(paths, issuer, root / "issuer.pub")

    def token(self, session: str, device: str = "dev-a", model: str = FAMILY, **kwargs: Any) -> str:
        return issue_token(self.issuer, session=session, device=device, model=model, **kwargs)

    def connect(self, address: str, device: str, token: str | None, timeout: float = 30) -> EdgeConnection:
        return EdgeConnection(
            address,
            ca=self.paths.ca_cert,
            cert=self.paths.device_cert(device),
            key=self.paths.device_key(device),
            token=token,
            timeout=timeout,
        )

    def channel(self, address: str, device: str = "healthcheck") -> grpc.Channel:
        credentials = grpc.ssl_channel_credentials(
            self.paths.ca_cert.read_bytes(),
            self.paths.device_key(device).read_bytes(),
            self.paths.device_cert(device).read_bytes(),
        )
        return grpc.secure_channel(address, credentials)


def health(deployment: Deployment, address: str, timeout: float = 10) -> str:
    """The edge's gRPC health status name, or the status code name of a refused check."""
    with deployment.channel(address) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout
            )
        except grpc.RpcError as exc:
            return exc.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def train_one_step(conn: EdgeConnection, tiny: TinyModel, **kwargs: Any) -> float:
    """Open a LoRA session, run one training step, close it; returns the loss."""
    model = SplitModel.from_pretrained(
        tiny.path,
        edge=conn,
        model=FAMILY,
        device_layers=1,
        head_layers=1,
        lora_config=lora_config_for(FAMILY),
        **kwargs,
    )
    try:
        optimizer = model.configure_optimizer(torch.optim.AdamW, lr=1e-2)
        loss = model(**make_batch(FAMILY, torch.Generator().manual_seed(0))).loss
        loss.backward()
        optimizer.step()
        return float(loss.item())
    finally:
        model.close()


def assert_edge_serves(deployment: Deployment, address: str, tiny: TinyModel) -> None:
    """After an attack: health is SERVING and another device can still train a step."""
    assert health(deployment, address) == "SERVING"
    session = f"s-bystander-{uuid.uuid4().hex[:8]}"
    with deployment.connect(address, "bystander", deployment.token(session, device="bystander")) as conn:
        assert torch.isfinite(torch.tensor(train_one_step(conn, tiny)))


def open_request(session: str, **kwargs: Any) -> pb.OpenSessionRequest:
    values: dict[str, Any] = {
        "model": FAMILY,
        "device_layers": 1,
        "head_layers": 1,
        "codec": "raw",
        "session_id": session,
    }
    values.update(kwargs)
    return pb.OpenSessionRequest(**values)
