"""Certificates for mutual TLS between devices and edges, made with `cryptography`.

One deployment CA signs the edge's server certificate (its hosts as DNS/IP SANs) and one client
certificate per device (CN = the device name). Keys are ECDSA P-256, which every TLS stack gRPC uses
accepts; private keys are written 0600; nothing is overwritten without `force`.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from splitft.errors import AlreadyExists, InvalidArgument, NotFound
from splitft.security.files import PRIVATE_MODE, PUBLIC_MODE, write_file

logger = logging.getLogger(__name__)

CA_DAYS = 5 * 365  # the deployment CA: rotate by re-running `certs init --force` and re-issuing
EDGE_DAYS = 397  # server certificates: the CA/Browser Forum ceiling, a sane rotation period
DEVICE_DAYS = 365
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class CertPaths:
    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def edge_cert(self) -> Path:
        return self.directory / "edge.pem"

    @property
    def edge_key(self) -> Path:
        return self.directory / "edge.key"

    @property
    def control_cert(self) -> Path:
        return self.directory / "control.pem"

    @property
    def control_key(self) -> Path:
        return self.directory / "control.key"

    def device_cert(self, name: str) -> Path:
        return self.directory / "devices" / f"{name}.pem"

    def device_key(self, name: str) -> Path:
        return self.directory / "devices" / f"{name}.key"


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write(path: Path, data: bytes, *, private: bool, force: bool) -> None:
    # --force replaces the directory entry (a symlink too) with a fresh 0600/0644 file; it never
    # truncates and rewrites the old file in place.
    write_file(path, data, force=force, mode=PRIVATE_MODE if private else PUBLIC_MODE)


def _refuse_existing(paths: list[Path], force: bool) -> None:
    existing = [str(p) for p in paths if os.path.lexists(p)]  # a dangling symlink counts too
    if existing and not force:
        raise AlreadyExists(f"refusing to overwrite {', '.join(existing)} (pass --force to replace)")


def write_secret_files(private: dict[Path, bytes], public: dict[Path, bytes], *, force: bool) -> None:
    """Write key material all-or-nothing: refuse before touching anything if a file exists."""
    _refuse_existing([*private, *public], force)
    for path, data in private.items():
        _write(path, data, private=True, force=force)
    for path, data in public.items():
        _write(path, data, private=False, force=force)


def _builder(subject: str, issuer: x509.Name | None, public_key, days: int) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
    )


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            if not re.fullmatch(r"[A-Za-z0-9*]([A-Za-z0-9.-]{0,252})", host):
                raise InvalidArgument(f"--host {host!r} is neither an IP address nor a DNS name") from None
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def init_ca(
    directory: str | Path, hosts: list[str], *, control_hosts: list[str] | None = None, force: bool = False
) -> CertPaths:
    """Create the CA, the edge's server certificate for `hosts` and the control plane's (HTTPS) one
    for `control_hosts` (default: `hosts`)."""
    if not hosts:
        raise InvalidArgument("give at least one --host for the edge certificate")
    paths = CertPaths(Path(directory))
    control_hosts = list(control_hosts or hosts)
    files = [
        paths.ca_cert,
        paths.ca_key,
        paths.edge_cert,
        paths.edge_key,
        paths.control_cert,
        paths.control_key,
    ]
    _refuse_existing(files, force)
    for names in (hosts, control_hosts):
        _san(names)  # refuse a bad host before writing anything
    ca_key = _new_key()
    ca = (
        _builder("splitft deployment CA", None, ca_key.public_key(), CA_DAYS)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write(paths.ca_key, _key_pem(ca_key), private=True, force=force)
    _write(paths.ca_cert, _cert_pem(ca), private=False, force=force)
    _write_server(ca, ca_key, "splitft-edge", hosts, (paths.edge_cert, paths.edge_key), force=force)
    _write_server(
        ca,
        ca_key,
        "splitft-control-plane",
        control_hosts,
        (paths.control_cert, paths.control_key),
        force=force,
    )
    logger.info(
        "wrote CA, edge certificate for %s and control-plane certificate for %s in %s",
        ", ".join(hosts),
        ", ".join(control_hosts),
        paths.directory,
    )
    return paths


def _write_server(
    ca: x509.Certificate, ca_key, subject: str, hosts: list[str], files: tuple[Path, Path], *, force: bool
) -> None:
    """A serverAuth certificate for `hosts` (DNS/IP SANs), signed by the CA, and its key."""
    key = _new_key()
    cert = (
        _leaf(ca, ca_key, subject, key, EDGE_DAYS, ExtendedKeyUsageOID.SERVER_AUTH)
        .add_extension(_san(hosts), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write(files[1], _key_pem(key), private=True, force=force)
    _write(files[0], _cert_pem(cert), private=False, force=force)


def issue_control(directory: str | Path, hosts: list[str], *, force: bool = False) -> CertPaths:
    """control.pem / control.key for `hosts` from an existing CA (a deployment made before HTTPS)."""
    if not hosts:
        raise InvalidArgument("give at least one --host for the control-plane certificate")
    paths = CertPaths(Path(directory))
    _refuse_existing([paths.control_cert, paths.control_key], force)
    _san(hosts)
    ca, ca_key = load_ca(paths)
    files = (paths.control_cert, paths.control_key)
    _write_server(ca, ca_key, "splitft-control-plane", hosts, files, force=force)
    logger.info("wrote control-plane certificate for %s in %s", ", ".join(hosts), paths.directory)
    return paths


def _leaf(ca: x509.Certificate, ca_key, subject: str, key, days: int, usage) -> x509.CertificateBuilder:
    return (
        _builder(subject, ca.subject, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )


def load_ca(paths: CertPaths) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    if not paths.ca_cert.is_file() or not paths.ca_key.is_file():
        raise NotFound(f"no CA in {paths.directory}: run `splitft certs init --dir {paths.directory}` first")
    ca = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise InvalidArgument(f"{paths.ca_key} is not an EC private key")
    return ca, key


def check_device_name(name: str) -> str:
    if not _NAME.fullmatch(name or ""):
        raise InvalidArgument(f"device name {name!r} must be 1-64 of [A-Za-z0-9._-], starting alphanumeric")
    return name


def sign_device_key(
    directory: str | Path, name: str, public_key, days: int = DEVICE_DAYS
) -> x509.Certificate:
    """A client certificate (CN = `name`) for `public_key`, signed by the deployment CA."""
    ca, ca_key = load_ca(CertPaths(Path(directory)))
    check_device_name(name)
    return _leaf(ca, ca_key, name, _PublicOnly(public_key), days, ExtendedKeyUsageOID.CLIENT_AUTH).sign(
        ca_key, hashes.SHA256()
    )


class _PublicOnly:
    """Adapter so `_leaf` can take a bare public key (a CSR's) like a private key."""

    def __init__(self, public_key) -> None:
        self._public = public_key

    def public_key(self):
        return self._public


def issue_device(directory: str | Path, name: str, *, force: bool = False) -> tuple[Path, Path]:
    """Write devices/NAME.pem and devices/NAME.key, a client certificate with CN = NAME."""
    paths = CertPaths(Path(directory))
    check_device_name(name)
    _refuse_existing([paths.device_cert(name), paths.device_key(name)], force)
    key = _new_key()
    cert = sign_device_key(directory, name, key.public_key())
    _write(paths.device_key(name), _key_pem(key), private=True, force=force)
    _write(paths.device_cert(name), _cert_pem(cert), private=False, force=force)
    logger.info("issued device certificate %s (valid %d days)", paths.device_cert(name), DEVICE_DAYS)
    return paths.device_cert(name), paths.device_key(name)
