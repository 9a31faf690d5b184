"""The control plane over HTTPS, and what a device or edge refuses to trust (security review H2, L9, L10).

Real processes and real TLS on loopback: `splitft control serve --certs` under uvicorn, clients
verifying it against the deployment CA (or failing against another CA), plaintext refused for
non-loopback hosts, an on-path proxy that swaps the CA in the enrollment answer, an impostor HTTPS
server, key files rewritten through symlinks, and the generated operator key kept out of logs.
"""

from __future__ import annotations

import http.server
import ipaddress
import json
import os
import re
import ssl
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from device_client.agent.control_client import ControlPlaneClient
from device_client.agent.credentials import DeviceCredential, enroll
from edge_server.control import ControlPlaneLink
from splitft.cli import main
from splitft.errors import InvalidArgument, Unauthenticated, Unavailable
from splitft.local.launch import ControlProcess, free_port
from splitft.security.certs import CertPaths, init_ca
from splitft.security.trust import ca_fingerprint, check_control_url, split_enrollment_token, tls_verify
from tests.support.control_fixtures import EDGE_SECRET, OPERATOR_KEY, bearer

REFUSAL = "refusing plaintext http://control.example:8080"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> CertPaths:
    return init_ca(tmp_path_factory.mktemp("certs"), ["127.0.0.1", "localhost"])


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> CertPaths:
    """Another deployment's CA: valid certificates, for the same host names, that nobody here trusts."""
    return init_ca(tmp_path_factory.mktemp("other-certs"), ["127.0.0.1", "localhost"])


@pytest.fixture(scope="module")
def control(pki: CertPaths, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlProcess]:
    """`splitft control serve --certs DIR --certs-dir DIR`: HTTPS, and it signs device CSRs."""
    root = tmp_path_factory.mktemp("control")
    process = ControlProcess(
        root / "data",
        operator_key=OPERATOR_KEY,
        edge_secret=EDGE_SECRET,
        certs_dir=pki.directory,
        tls_dir=pki.directory,
        log_path=str(root / "control.log"),
    )
    with process:
        yield process


@pytest.fixture(scope="module")
def plain_control(pki: CertPaths, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlProcess]:
    """The same deployment CA behind plain loopback HTTP (as tests and local experiments run it)."""
    root = tmp_path_factory.mktemp("plain-control")
    process = ControlProcess(
        root / "data",
        operator_key=OPERATOR_KEY,
        edge_secret=EDGE_SECRET,
        certs_dir=pki.directory,
        log_path=str(root / "control.log"),
    )
    with process:
        yield process


def _new_token(control: ControlProcess, name: str) -> str:
    response = httpx.post(
        control.url + "/v1/devices", json={"name": name}, headers=bearer(OPERATOR_KEY), verify=control.verify
    )
    assert response.status_code == 201, response.text
    return response.json()["enrollment_token"]


# --- HTTPS served, verified against the deployment CA ---------------------------------------------


def test_certs_init_writes_a_control_plane_certificate_for_its_hosts(tmp_path: Path) -> None:
    argv = ["certs", "init", "--dir", str(tmp_path), "--host", "edge.example"]
    assert main([*argv, "--control-host", "control.example", "--control-host", "10.0.0.7"]) == 0
    paths = CertPaths(tmp_path)
    cert = x509.load_pem_x509_certificate(paths.control_cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["control.example"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.7")]
    assert (
        ExtendedKeyUsageOID.SERVER_AUTH
        in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    )
    ca = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    cert.verify_directly_issued_by(ca)
    assert _mode(paths.control_key) == 0o600 and _mode(paths.control_cert) == 0o644


def test_control_plane_serves_https_that_only_its_ca_verifies(
    control: ControlProcess, other_pki: CertPaths
) -> None:
    assert control.url.startswith("https://127.0.0.1:")
    assert httpx.get(control.url + "/healthz", verify=control.verify, timeout=10).json() == {"status": "ok"}
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(control.url + "/healthz", verify=tls_verify(other_pki.ca_cert.read_bytes()), timeout=10)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(control.url + "/healthz", timeout=10)  # the system's store does not know this CA
    plain = control.url.replace("https://", "http://")
    with pytest.raises(httpx.HTTPError):  # no plaintext listener behind the TLS port
        httpx.get(plain + "/healthz", timeout=10)


def test_control_serve_without_its_certificate_is_a_cli_error(tmp_path: Path) -> None:
    env = dict(os.environ, SPLITFT_OPERATOR_KEY=OPERATOR_KEY, SPLITFT_EDGE_SECRET=EDGE_SECRET)
    argv = ["control", "serve", "--data-dir", str(tmp_path / "d"), "--certs", str(tmp_path), "--port", "0"]
    done = subprocess.run(
        [sys.executable, "-m", "splitft.cli", *argv], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done.stderr
    assert "control.pem" in done.stderr and "certs init" in done.stderr


def test_an_edge_verifies_the_control_plane_against_the_ca(
    control: ControlProcess, pki: CertPaths, other_pki: CertPaths
) -> None:
    def link(ca: CertPaths) -> ControlPlaneLink:
        return ControlPlaneLink(
            control.url,
            EDGE_SECRET,
            name="edge-tls",
            address="127.0.0.1:50051",
            models=["m"],
            max_sessions=1,
            ca_pem=ca.ca_cert.read_bytes(),
        )

    with pytest.raises(Unavailable, match="CERTIFICATE_VERIFY_FAILED"):
        link(other_pki).register()  # the edge secret never leaves over an unverified channel
    assert link(pki).register().edge_id


# --- plaintext to another host -----------------------------------------------------------------------


def _cli(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "splitft.cli", *argv], capture_output=True, text=True, timeout=timeout
    )


def test_enroll_refuses_plaintext_to_another_host_and_says_why(tmp_path: Path) -> None:
    out = tmp_path / "device.json"
    argv = ("device", "enroll", "--control-plane", "http://control.example:8080")
    done = _cli(*argv, "--token", "sft_secret-secret", "--out", str(out))
    assert done.returncode == 2
    assert REFUSAL in " ".join(done.stderr.split()) and "--insecure" in done.stderr
    assert not out.exists()
    with pytest.raises(InvalidArgument, match="refusing plaintext"):
        enroll("http://10.1.2.3:8080", "sft_secret-secret", out)
    assert check_control_url("http://control.example:8080/", insecure=True) == "http://control.example:8080"
    for url in ("http://127.0.0.1:8080", "http://localhost:8080", "http://[::1]:8080", "https://c.example"):
        assert check_control_url(url) == url  # loopback, or verified TLS


def test_the_agent_and_the_edge_refuse_plaintext_to_another_host(tmp_path: Path) -> None:
    credential = DeviceCredential("http://control.example:8080", "id", "phone", "secret-credential")
    with pytest.raises(InvalidArgument, match="refusing plaintext"):
        ControlPlaneClient(credential)
    ControlPlaneClient(credential, insecure=True).close()
    with pytest.raises(InvalidArgument, match="refusing plaintext"):
        ControlPlaneLink(
            "http://control.example:8080", EDGE_SECRET, name="e", address="a:1", models=[], max_sessions=1
        )
    path = credential.save(tmp_path / "device.json")
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"text": "hello", "label": 0}) + "\n")
    argv = ("device", "run", "--credential", str(path), "--data", str(data), "--model-dir", f"m={tmp_path}")
    done = _cli(*argv, "--max-sessions", "1")  # before: it polled control.example, never returning
    assert done.returncode == 2 and REFUSAL in " ".join(done.stderr.split())


# --- the CA bound to the enrollment token --------------------------------------------------------------


def test_a_token_pins_the_ca_and_https_enrollment_needs_nothing_else(
    control: ControlProcess, pki: CertPaths, tmp_path: Path
) -> None:
    token = _new_token(control, "phone-https")
    secret, fingerprint = split_enrollment_token(token)
    assert fingerprint == ca_fingerprint(pki.ca_cert.read_bytes()) and secret.startswith("sft_")
    credential = enroll(control.url, token, tmp_path / "device.json")
    assert credential.ca_pem == pki.ca_cert.read_text() == credential.control_plane_ca_pem
    assert _mode(tmp_path / "device.json") == 0o600
    saved = DeviceCredential.load(tmp_path / "device.json")
    for usable in (saved, replace(saved, control_plane_ca_pem=None)):  # the latter: enrolled before HTTPS
        client = ControlPlaneClient(usable)  # verifies with the enrollment's CA, else the deployment CA
        try:
            assert client.next_assignment()[0] is None  # authenticated over HTTPS; no job yet
        finally:
            client.close()


def test_the_agent_refuses_a_control_plane_its_cas_do_not_verify(
    control: ControlProcess, other_pki: CertPaths
) -> None:
    other = other_pki.ca_cert.read_text()
    for anchor, deployment in ((other, None), (None, other)):
        credential = DeviceCredential(control.url, "id", "phone", "secret-credential", None, None, deployment)
        client = ControlPlaneClient(replace(credential, control_plane_ca_pem=anchor))
        try:
            with pytest.raises(Unavailable, match="CERTIFICATE_VERIFY_FAILED"):
                client.next_assignment()  # the bearer credential never leaves over that channel
        finally:
            client.close()


def test_a_token_without_a_pin_needs_the_ca_given_and_fails_closed(
    control: ControlProcess, pki: CertPaths, tmp_path: Path
) -> None:
    secret, _ = split_enrollment_token(_new_token(control, "phone-unpinned"))
    with pytest.raises(Unavailable, match="CERTIFICATE_VERIFY_FAILED.*see --ca"):
        enroll(control.url, secret, tmp_path / "device.json")  # only the public CAs: TLS fails first
    credential = enroll(control.url, secret, tmp_path / "device.json", ca_file=pki.ca_cert)
    assert credential.control_plane_ca_pem == pki.ca_cert.read_text()  # the token was still unspent


class _Proxy(http.server.BaseHTTPRequestHandler):
    """An on-path attacker in front of the real control plane: forwards, but swaps the enrolled CA."""

    upstream = ""
    verify: ssl.SSLContext | bool = True
    swap_ca = ""
    seen: list[str] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.seen.append(self.path)
        headers = {"Content-Type": "application/json"}
        response = httpx.post(self.upstream + self.path, content=body, headers=headers, verify=self.verify)
        answer = response.json()
        if self.path == "/v1/devices/enroll" and response.status_code == 200:
            answer["ca_pem"] = self.swap_ca
        self._reply(response.status_code, json.dumps(answer).encode())

    def do_GET(self) -> None:  # noqa: N802
        self.seen.append(self.path)
        self._reply(200, self.swap_ca.encode())  # an impostor hands out its own CA

    def _reply(self, status: int, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        return None


def _serve(handler: type[_Proxy], context: ssl.SSLContext | None = None) -> http.server.ThreadingHTTPServer:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_a_ca_swapped_in_the_enrollment_answer_is_refused(
    plain_control: ControlProcess, pki: CertPaths, other_pki: CertPaths, tmp_path: Path
) -> None:
    """Even where the channel is not verified (plain loopback HTTP), the token's fingerprint is."""
    handler = type("Swap", (_Proxy,), {"upstream": plain_control.url, "seen": []})
    handler.swap_ca = other_pki.ca_cert.read_text()
    proxy = _serve(handler)
    try:
        url = f"http://127.0.0.1:{proxy.server_address[1]}"  # plaintext, but loopback: allowed
        with pytest.raises(Unauthenticated, match="refusing to trust it"):
            enroll(url, _new_token(plain_control, "phone-swapped"), tmp_path / "device.json")
        assert not (tmp_path / "device.json").exists()
        handler.swap_ca = pki.ca_cert.read_text()  # the same path, forwarding the real CA: accepted
        credential = enroll(url, _new_token(plain_control, "phone-honest"), tmp_path / "device.json")
    finally:
        proxy.shutdown()
    assert handler.seen == ["/v1/devices/enroll"] * 2 and credential.ca_pem == pki.ca_cert.read_text()


def test_an_impostor_https_server_never_sees_the_token(
    control: ControlProcess, other_pki: CertPaths, tmp_path: Path
) -> None:
    """HTTPS with a valid certificate from ANOTHER CA: the pinned fetch fails before any secret goes out."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(other_pki.control_cert, other_pki.control_key)
    handler = type("Impostor", (_Proxy,), {"seen": []})
    handler.swap_ca = other_pki.ca_cert.read_text()
    impostor = _serve(handler, context)
    token = _new_token(control, "phone-impostor")
    try:
        url = f"https://127.0.0.1:{impostor.server_address[1]}"
        with pytest.raises(Unauthenticated, match="pins CA"):
            enroll(url, token, tmp_path / "device.json")
    finally:
        impostor.shutdown()
    assert handler.seen == ["/v1/ca.pem"]  # the POST with the token never happened
    assert enroll(control.url, token, tmp_path / "device.json").device_name == "phone-impostor"


# --- key files and the generated operator key -----------------------------------------------------------


def test_certs_force_replaces_a_symlinked_key_instead_of_writing_through_it(tmp_path: Path) -> None:
    certs, victim = tmp_path / "certs", tmp_path / "victim.txt"
    assert main(["certs", "init", "--dir", str(certs), "--host", "127.0.0.1"]) == 0
    victim.write_text("not a key\n")
    victim.chmod(0o644)
    (certs / "ca.key").unlink()
    (certs / "ca.key").symlink_to(victim)
    old_edge_key = (certs / "edge.key").stat().st_ino
    assert main(["certs", "init", "--dir", str(certs), "--host", "127.0.0.1", "--force"]) == 0
    assert victim.read_text() == "not a key\n" and _mode(victim) == 0o644
    assert not (certs / "ca.key").is_symlink() and _mode(certs / "ca.key") == 0o600
    assert (certs / "edge.key").stat().st_ino != old_edge_key  # a new file, never rewritten in place
    assert "PRIVATE KEY" in (certs / "ca.key").read_text()


def test_a_dangling_symlink_counts_as_an_existing_key(tmp_path: Path) -> None:
    (tmp_path / "ca.key").symlink_to(tmp_path / "nowhere")
    assert main(["certs", "init", "--dir", str(tmp_path), "--host", "127.0.0.1"]) == 2
    assert not (tmp_path / "nowhere").exists() and not (tmp_path / "ca.pem").exists()


def test_the_generated_operator_key_is_in_a_0600_file_not_in_the_log(tmp_path: Path) -> None:
    log = tmp_path / "control.log"
    process = ControlProcess(tmp_path / "data", operator_key="", edge_secret=EDGE_SECRET, log_path=str(log))
    del process.env["SPLITFT_OPERATOR_KEY"]  # none configured: the control plane generates the first
    with process:
        key_file = tmp_path / "data" / "operator.key"
        key = key_file.read_text().strip()
        response = httpx.get(process.url + "/v1/jobs", headers=bearer(key), timeout=10)
        assert response.status_code == 200, response.text
    assert _mode(key_file) == 0o600 and re.fullmatch(r"sfk_[\w-]+", key)
    text = log.read_text()
    assert key not in text and "sfk_" not in text and "operator.key" in text
