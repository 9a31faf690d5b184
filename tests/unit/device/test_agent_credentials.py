"""The device credential file and enrollment (device_client/agent/credentials.py); the control plane
is an httpx.MockTransport here (see tests/support/agent_support.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from device_client.agent.credentials import DeviceCredential, enroll
from splitft.errors import AlreadyExists, InvalidArgument, NotFound
from tests.support.agent_support import CP, credential


def test_credential_round_trip_is_private(tmp_path: Path) -> None:
    cred = credential()
    path = cred.save(tmp_path / "sub" / "device.json")
    assert path.stat().st_mode & 0o777 == 0o600
    loaded = DeviceCredential.load(path)
    assert loaded == cred
    assert loaded.control_plane == CP  # trailing slash dropped
    assert "sfd_secret" not in repr(loaded) and "PRIVATE KEY" not in repr(loaded)
    assert loaded.auth_headers == {"Authorization": "Bearer sfd_secret-credential"}


def test_credential_refuses_overwrite_unless_forced(tmp_path: Path) -> None:
    path = tmp_path / "device.json"
    path.write_text("old")
    path.chmod(0o644)
    with pytest.raises(AlreadyExists, match="refusing to overwrite"):
        credential().save(path)
    assert path.read_text() == "old"
    credential(device_name="phone-18").save(path, force=True)
    assert path.stat().st_mode & 0o777 == 0o600
    assert DeviceCredential.load(path).device_name == "phone-18"
    assert [p.name for p in tmp_path.iterdir()] == ["device.json"]  # no temporary file left


@pytest.mark.parametrize(
    ("content", "error", "match"),
    [
        ("{not json", InvalidArgument, "not valid JSON"),
        ("[1, 2]", InvalidArgument, "JSON object"),
        ('{"control_plane": "http://x", "device_id": "d"}', InvalidArgument, "lacks device_name, credential"),
        (
            '{"control_plane": "http://x", "device_id": "d", "device_name": "n", "credential": 5}',
            InvalidArgument,
            "credential must be a string",
        ),
        (
            '{"control_plane": "ftp://x", "device_id": "d", "device_name": "n", "credential": "c"}',
            InvalidArgument,
            "http:// or https://",
        ),
        (
            '{"format": 9, "control_plane": "http://x", "device_id": "d", "device_name": "n", '
            '"credential": "c"}',
            InvalidArgument,
            "unknown format",
        ),
    ],
)
def test_credential_load_errors(tmp_path: Path, content: str, error: type[Exception], match: str) -> None:
    path = tmp_path / "device.json"
    path.write_text(content)
    with pytest.raises(error, match=match):
        DeviceCredential.load(path)


def test_credential_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="splitft device enroll"):
        DeviceCredential.load(tmp_path / "absent.json")


def test_file_modes_hold_under_a_loose_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        path = credential().save(tmp_path / "device.json")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o600


def test_enroll_sends_a_csr_and_saves_the_key(tmp_path: Path) -> None:
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return httpx.Response(
            200,
            json={
                "id": "d-9",
                "name": "phone-17",
                "credential": "sfd_x",
                "certificate_pem": "C",
                "ca_pem": "A",
            },
        )

    out = tmp_path / "device.json"
    with httpx.Client(transport=httpx.MockTransport(handler)) as http:
        cred = enroll(CP, "enroll-token-123", out, http=http)
    (req,) = seen
    assert (req.method, str(req.url)) == ("POST", f"{CP}/v1/devices/enroll")
    assert "authorization" not in req.headers  # the one-time token in the body is the authentication
    body = json.loads(req.content)
    assert body["enrollment_token"] == "enroll-token-123"
    csr = x509.load_pem_x509_csr(body["csr_pem"].encode())
    assert csr.is_signature_valid
    key_pem = DeviceCredential.load(out).key_pem
    assert key_pem is not None
    key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert csr.public_key() == key.public_key()
    assert (cred.device_id, cred.device_name, cred.certificate_pem, cred.ca_pem) == (
        "d-9",
        "phone-17",
        "C",
        "A",
    )
    assert out.stat().st_mode & 0o777 == 0o600


def test_enroll_does_not_spend_the_token_when_it_cannot_save(tmp_path: Path) -> None:
    out = tmp_path / "device.json"
    out.write_text("{}")

    def handler(req: httpx.Request) -> httpx.Response:
        raise AssertionError("no request may be sent")

    with httpx.Client(transport=httpx.MockTransport(handler)) as http:
        with pytest.raises(AlreadyExists):
            enroll(CP, "enroll-token-123", out, http=http)
