"""A device's identity with the control plane: enrollment and the credential file.

`enroll` trades an operator's one-time enrollment token for a device credential (the bearer secret
for /v1/assignments and /v1/sessions) and, through a CSR, a client certificate for mutual TLS with
the edges. Everything the device needs later lives in ONE JSON file, written 0600 because it holds
the credential and the private key. The REST plumbing (errors mapped onto the catalog) is `http.py`.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from splitft.errors import AlreadyExists, InvalidArgument, NotFound, Unavailable
from splitft.rest import DEFAULT_HTTP_TIMEOUT, request, response_json
from splitft.security.files import write_private_file
from splitft.security.trust import (
    check_ca,
    check_control_url,
    control_client,
    fetch_pinned_ca,
    read_ca_file,
    split_enrollment_token,
)

logger = logging.getLogger(__name__)

CREDENTIAL_FORMAT = 1  # bumped when the file layout changes incompatibly
CSR_PLACEHOLDER_CN = "device"  # the control plane replaces the CN with the registered device name


@dataclass(frozen=True)
class DeviceCredential:
    """What an enrolled device keeps: where the control plane is, who it is, and its secrets.

    Secrets are left out of `repr` so that logging a credential never leaks them.
    """

    control_plane: str  # base URL, e.g. https://control.example:8000 (no trailing slash)
    device_id: str
    device_name: str  # the CN of the client certificate; session tokens name it
    credential: str = field(repr=False)  # bearer secret for the device routes
    certificate_pem: str | None = None  # client certificate for mutual TLS with edges
    key_pem: str | None = field(default=None, repr=False)  # its private key (PKCS#8 PEM)
    ca_pem: str | None = None  # deployment CA that signed the edges' certificates
    # The CA that verified the control plane's HTTPS at enrollment; None when none did (loopback
    # HTTP, the public CAs, or enrolled before HTTPS): then ca_pem plus the public CAs verify it.
    control_plane_ca_pem: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "control_plane", normalize_url(self.control_plane))
        for name in ("device_id", "device_name", "credential"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise InvalidArgument(f"device credential field {name!r} must be a non-empty string")

    @property
    def auth_headers(self) -> dict[str, str]:
        """The header every device route wants."""
        return {"Authorization": f"Bearer {self.credential}"}

    @property
    def has_tls_identity(self) -> bool:
        """Whether this device can dial edges over mutual TLS (certificate, key and CA all present)."""
        return bool(self.certificate_pem and self.key_pem and self.ca_pem)

    def save(self, path: str | Path, *, force: bool = False) -> Path:
        """Write the credential as JSON, mode 0600; refuse to replace an existing file unless `force`."""
        data = json.dumps({"format": CREDENTIAL_FORMAT, **asdict(self)}, indent=2).encode() + b"\n"
        out = Path(path)
        write_private_file(out, data, force=force)
        logger.info("saved credential of device %s to %s", self.device_name, out)
        return out

    @classmethod
    def load(cls, path: str | Path) -> DeviceCredential:
        """Read a credential file; NotFound if absent, InvalidArgument naming what is wrong otherwise."""
        source = Path(path)
        try:
            text = source.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise NotFound(f"no device credential at {source}: run `splitft device enroll` first") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidArgument(f"cannot read device credential {source}: {exc}") from None
        _warn_if_readable_by_others(source)
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidArgument(f"device credential {source} is not valid JSON: {exc}") from None
        return cls._from_json(raw, source)

    @classmethod
    def _from_json(cls, raw: Any, source: Path) -> DeviceCredential:
        if not isinstance(raw, dict):
            raise InvalidArgument(f"device credential {source} must hold a JSON object")
        if raw.get("format", CREDENTIAL_FORMAT) != CREDENTIAL_FORMAT:
            raise InvalidArgument(f"device credential {source} has unknown format {raw.get('format')!r}")
        required = ("control_plane", "device_id", "device_name", "credential")
        missing = [name for name in required if name not in raw]
        if missing:
            raise InvalidArgument(f"device credential {source} lacks {', '.join(missing)}")
        values: dict[str, Any] = {f.name: raw.get(f.name) for f in fields(cls)}
        for name, value in values.items():
            if value is not None and not isinstance(value, str):
                raise InvalidArgument(f"device credential {source}: {name} must be a string")
        return cls(**values)


def normalize_url(url: str) -> str:
    """A control-plane base URL without a trailing slash; only http(s) makes sense here."""
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise InvalidArgument(f"control plane URL must start with http:// or https://, got {url!r}")
    return url.rstrip("/")


def _warn_if_readable_by_others(path: Path) -> None:
    if os.name == "posix" and path.stat().st_mode & 0o077:
        logger.warning("device credential %s is readable by other users; chmod 600 it", path)


# --- enrollment ----------------------------------------------------------------------------------


def new_device_key() -> ec.EllipticCurvePrivateKey:
    """ECDSA P-256, the key type the deployment CA and every gRPC TLS stack accept."""
    return ec.generate_private_key(ec.SECP256R1())


def build_csr(key: ec.EllipticCurvePrivateKey) -> str:
    """A CSR proving possession of `key`; its CN is a placeholder the control plane overrides."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CSR_PLACEHOLDER_CN)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def enroll(
    control_plane: str,
    enrollment_token: str,
    out_path: str | Path,
    *,
    force: bool = False,
    http: httpx.Client | None = None,
    ca_file: str | Path | None = None,
    insecure: bool = False,
) -> DeviceCredential:
    """Enroll this device: new key + CSR, POST /v1/devices/enroll, save the credential file 0600.

    HTTPS is verified against `ca_file`, else against the CA pinned by the token's fingerprint
    (fetched from GET /v1/ca.pem and checked before any secret is sent), else the system's trust
    store. Plaintext http:// is refused for a non-loopback host unless `insecure`. When the token
    pins a CA, the CA in the answer must be that one: a swapped CA is refused (Unauthenticated).

    The file is checked BEFORE the request: the enrollment token is one-time, so it must not be
    spent when the result could not be saved.
    """
    out = Path(out_path)
    if out.exists() and not force:
        raise AlreadyExists(f"refusing to overwrite {out} (pass --force to replace it)")
    if not enrollment_token:
        raise InvalidArgument("an enrollment token is required (from the operator's POST /v1/devices)")
    secret, fingerprint = split_enrollment_token(enrollment_token)
    base = check_control_url(normalize_url(control_plane), insecure=insecure)
    anchor = read_ca_file(ca_file) if ca_file is not None else None
    if anchor is None and fingerprint and base.startswith("https://") and http is None:
        anchor = fetch_pinned_ca(base, fingerprint, timeout=DEFAULT_HTTP_TIMEOUT)
    key = new_device_key()
    body = {"enrollment_token": secret, "csr_pem": build_csr(key)}
    client = _Borrowed(http) if http is not None else control_client(anchor, timeout=DEFAULT_HTTP_TIMEOUT)
    with client as session:
        response = request(session, "POST", f"{base}/v1/devices/enroll", json=body)
    credential = _credential_from_enrolled(base, response, key)
    if fingerprint is not None:
        check_ca(credential.ca_pem, fingerprint)
    elif credential.ca_pem and base.startswith("http://"):
        logger.warning("enrolled over plaintext HTTP with a token that pins no CA: the CA is trusted blindly")
    credential = replace(credential, control_plane_ca_pem=anchor)
    credential.save(out, force=force)
    logger.info("enrolled as device %s (%s)", credential.device_name, credential.device_id)
    return credential


def _credential_from_enrolled(
    base: str, response: httpx.Response, key: ec.EllipticCurvePrivateKey
) -> DeviceCredential:
    enrolled = response_json(response)
    if not isinstance(enrolled, dict) or not all(
        isinstance(enrolled.get(k), str) for k in ("id", "name", "credential")
    ):
        raise Unavailable("the control plane's enroll answer lacks id, name or credential")
    if not enrolled.get("certificate_pem"):
        logger.warning("the control plane issued no client certificate: this device cannot use mTLS edges")
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return DeviceCredential(
        control_plane=base,
        device_id=enrolled["id"],
        device_name=enrolled["name"],
        credential=enrolled["credential"],
        certificate_pem=enrolled.get("certificate_pem"),
        key_pem=key_pem,
        ca_pem=enrolled.get("ca_pem"),
    )


# --- a caller's HTTP client, or one of our own --------------------------------------------------


class _Borrowed:
    """Context manager that yields a caller's client without closing it."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client

    def __enter__(self) -> httpx.Client:
        return self.client

    def __exit__(self, *exc: object) -> None:
        return None
