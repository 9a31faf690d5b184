"""`splitft certs` and `splitft tokens`: files, modes, refusals, and what the certificates say."""

from __future__ import annotations

import ipaddress
import stat
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from splitft.cli import main
from splitft.errors import InvalidArgument, PermissionDenied, Unauthenticated
from splitft.security.tokens import authorize, issue_token, load_private_key, load_public_key, verify_token


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_certs_init_writes_ca_and_edge_with_private_keys_0600(tmp_path):
    assert (
        main(["certs", "init", "--dir", str(tmp_path), "--host", "127.0.0.1", "--host", "edge.example"]) == 0
    )
    assert _mode(tmp_path / "ca.key") == 0o600 and _mode(tmp_path / "edge.key") == 0o600
    edge = x509.load_pem_x509_certificate((tmp_path / "edge.pem").read_bytes())
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.pem").read_bytes())
    san = edge.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert san.get_values_for_type(x509.DNSName) == ["edge.example"]
    assert edge.issuer == ca.subject
    assert (
        ExtendedKeyUsageOID.SERVER_AUTH
        in edge.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    )
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert isinstance(edge.public_key(), ec.EllipticCurvePublicKey)
    lifetime = edge.not_valid_after_utc - edge.not_valid_before_utc
    assert 300 < lifetime.days < 400


def test_certs_init_twice_without_force_fails_and_touches_nothing(tmp_path):
    assert main(["certs", "init", "--dir", str(tmp_path), "--host", "127.0.0.1"]) == 0
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.iterdir() if p.is_file()}
    assert main(["certs", "init", "--dir", str(tmp_path), "--host", "127.0.0.1"]) == 2
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.iterdir() if p.is_file()}
    assert after == before
    assert main(["certs", "init", "--dir", str(tmp_path), "--host", "127.0.0.1", "--force"]) == 0
    assert (tmp_path / "ca.pem").read_bytes() != before["ca.pem"][0]
    assert _mode(tmp_path / "ca.key") == 0o600


def test_certs_device_issues_a_client_certificate_named_after_the_device(tmp_path):
    assert main(["certs", "device", "--dir", str(tmp_path), "--name", "dev-1"]) == 2  # no CA yet
    assert main(["certs", "init", "--dir", str(tmp_path), "--host", "127.0.0.1"]) == 0
    assert main(["certs", "device", "--dir", str(tmp_path), "--name", "dev-1"]) == 0
    cert = x509.load_pem_x509_certificate((tmp_path / "devices" / "dev-1.pem").read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "dev-1"
    assert (
        ExtendedKeyUsageOID.CLIENT_AUTH
        in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    )
    assert _mode(tmp_path / "devices" / "dev-1.key") == 0o600
    assert main(["certs", "device", "--dir", str(tmp_path), "--name", "dev-1"]) == 2  # exists, no --force
    assert main(["certs", "device", "--dir", str(tmp_path), "--name", "../evil"]) == 2


def test_tokens_keygen_and_issue_round_trip(tmp_path, capsys):
    assert main(["tokens", "keygen", "--out", str(tmp_path)]) == 0
    assert _mode(tmp_path / "issuer.key") == 0o600
    assert main(["tokens", "keygen", "--out", str(tmp_path)]) == 2
    capsys.readouterr()
    args = [
        "tokens",
        "issue",
        "--key",
        str(tmp_path / "issuer.key"),
        "--session",
        "s1",
        "--device",
        "d1",
        "--model",
        "llama",
        "--edge",
        "e1",
        "--job",
        "j1",
        "--ttl",
        "120",
    ]
    assert main(args) == 0
    token = capsys.readouterr().out.strip()
    claims = verify_token(token, [load_public_key(tmp_path / "issuer.pub")])
    assert (claims.session, claims.device, claims.model, claims.edge, claims.job) == (
        "s1",
        "d1",
        "llama",
        "e1",
        "j1",
    )
    assert 100 < claims.expires - time.time() <= 120


def test_token_checks(tmp_path):
    assert main(["tokens", "keygen", "--out", str(tmp_path)]) == 0
    key = load_private_key(tmp_path / "issuer.key")
    issuers = [load_public_key(tmp_path / "issuer.pub")]
    token = issue_token(key, session="s", device="d", model="m")
    claims = verify_token(token, issuers)
    authorize(claims, session="s", model="m", peer_device="d")
    with pytest.raises(PermissionDenied):
        authorize(claims, session="other")
    with pytest.raises(PermissionDenied):
        authorize(claims, session="s", peer_device="someone-else")
    with pytest.raises(Unauthenticated, match="expired"):
        verify_token(token, issuers, now=time.time() + 7200)
    with pytest.raises(Unauthenticated):
        verify_token("x" * 5000, issuers)
    with pytest.raises(InvalidArgument):
        issue_token(key, session="", device="d", model="m")
