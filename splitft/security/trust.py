"""Trust in the control plane: which URLs may be plaintext, which CA verifies HTTPS, and the CA
fingerprint an enrollment token carries.

Bearer secrets (operator keys, the edge secret, enrollment tokens, device credentials), the CA a
device will trust and the edge address it will dial all cross the control plane's REST API, so a
client speaks HTTPS and verifies the server; plaintext `http://` is only for loopback unless the
user says `--insecure`.

An enrollment token is `<secret>.<fingerprint>`: the fingerprint is the SHA-256 of the deployment
CA's DER encoding (64 hex digits, the value `openssl x509 -noout -fingerprint -sha256` prints,
without colons). The device checks the CA it is handed against it, so a swapped CA is refused even
when the channel could not be verified (plain loopback HTTP, or HTTPS before it knows the CA).
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import re
import ssl
from pathlib import Path
from urllib.parse import urlsplit

import certifi
import httpx
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from splitft.errors import InvalidArgument, Unauthenticated, Unavailable

logger = logging.getLogger(__name__)

TOKEN_SEPARATOR = "."  # token_urlsafe secrets never contain it
CA_PATH = "/v1/ca.pem"  # public: the deployment CA, for devices that pin it by fingerprint
MAX_CA_BYTES = 64 * 1024
_FINGERPRINT = re.compile(r"^[0-9a-f]{64}$")


def ca_fingerprint(ca_pem: str | bytes) -> str:
    """SHA-256 of the (first) certificate's DER encoding, as 64 lowercase hex digits."""
    data = ca_pem.encode() if isinstance(ca_pem, str) else ca_pem
    try:
        cert = x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise InvalidArgument(f"not a PEM certificate: {exc}") from None
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def normalize_fingerprint(text: str) -> str:
    """A fingerprint as 64 lowercase hex digits; colons (as openssl prints them) are dropped."""
    value = text.replace(":", "").strip().lower()
    if not _FINGERPRINT.fullmatch(value):
        raise InvalidArgument(f"a CA fingerprint is 64 hex digits (SHA-256), got {text!r}")
    return value


def bind_enrollment_token(secret: str, ca_pem: str | bytes | None) -> str:
    """The token an operator hands a device: the secret, plus the CA fingerprint when there is a CA."""
    return secret if ca_pem is None else f"{secret}{TOKEN_SEPARATOR}{ca_fingerprint(ca_pem)}"


def split_enrollment_token(token: str) -> tuple[str, str | None]:
    """(secret, CA fingerprint or None) of an enrollment token."""
    secret, sep, fingerprint = token.rpartition(TOKEN_SEPARATOR)
    if not sep:
        return token, None
    if not secret:
        raise InvalidArgument("the enrollment token has a CA fingerprint but no secret")
    return secret, normalize_fingerprint(fingerprint)


def check_ca(ca_pem: str | None, fingerprint: str, what: str = "the control plane") -> str:
    """`ca_pem` if its fingerprint is `fingerprint`; refused otherwise (a swapped or missing CA)."""
    if not ca_pem:
        raise Unauthenticated(
            f"{what} sent no CA, but the enrollment token pins CA {fingerprint[:16]}…: refusing to enroll"
        )
    try:
        got = ca_fingerprint(ca_pem)
    except InvalidArgument as exc:
        raise Unauthenticated(f"{what} sent a CA that is not a certificate ({exc.message})") from None
    if got != fingerprint:
        raise Unauthenticated(
            f"{what} sent CA {got[:16]}…, but the enrollment token pins CA {fingerprint[:16]}…: "
            "refusing to trust it (someone on the path may have swapped it)"
        )
    return ca_pem


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine only (localhost, 127.0.0.0/8, ::1)."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_control_url(url: str, *, insecure: bool = False, flag: str = "--insecure") -> str:
    """`url` without a trailing slash; plaintext http:// to another host is refused unless `insecure`."""
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise InvalidArgument(f"control plane URL must start with http:// or https://, got {url!r}")
    parts = urlsplit(url)
    if not parts.hostname:
        raise InvalidArgument(f"control plane URL {url!r} names no host")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        if not insecure:
            raise InvalidArgument(
                f"refusing plaintext {url}: bearer secrets, the CA and edge addresses would cross the "
                f"network unencrypted and unauthenticated; use https:// (or pass {flag} to accept the risk)"
            )
        logger.warning("talking to the control plane %s in plaintext (%s)", url, flag)
    return url.rstrip("/")


def tls_verify(ca_pem: str | bytes | None, *, public_cas: bool = False) -> ssl.SSLContext | bool:
    """httpx's `verify`: a context trusting only `ca_pem` (plus the public CAs httpx trusts when
    `public_cas`), or True (those public CAs) without one."""
    if ca_pem is None:
        return True
    text = ca_pem.decode() if isinstance(ca_pem, bytes) else ca_pem
    context = ssl.create_default_context(cafile=certifi.where() if public_cas else None)
    try:
        context.load_verify_locations(cadata=text)
    except ssl.SSLError as exc:
        raise InvalidArgument(f"the control-plane CA is not a usable PEM certificate: {exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def read_ca_file(path: str | Path) -> str:
    """A CA file's PEM text, checked to parse."""
    try:
        text = Path(path).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"cannot read CA file {path}: {exc}") from None
    ca_fingerprint(text)
    return text


def control_client(
    ca_pem: str | bytes | None = None, *, public_cas: bool = False, timeout: float = 30.0
) -> httpx.Client:
    """An HTTP client for the control plane that verifies HTTPS against `ca_pem` (see `tls_verify`)."""
    return httpx.Client(timeout=timeout, verify=tls_verify(ca_pem, public_cas=public_cas))


def fetch_pinned_ca(base_url: str, fingerprint: str, *, timeout: float = 30.0) -> str:
    """The control plane's CA from GET /v1/ca.pem, accepted only if it has `fingerprint`.

    The request carries no secret, so it may go out before the server is verified: whatever answers,
    only the CA the operator pinned in the token is accepted, and then verifies everything after.
    """
    url = base_url + CA_PATH
    try:
        with httpx.Client(timeout=timeout, verify=False) as client, client.stream("GET", url) as response:
            body = b""
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_CA_BYTES:
                    raise Unavailable(f"GET {url} answered more than {MAX_CA_BYTES} bytes")
    except httpx.HTTPError as exc:
        raise Unavailable(f"control plane unreachable (GET {url}): {type(exc).__name__}: {exc}") from None
    if response.status_code != 200:
        raise Unavailable(f"GET {url} -> {response.status_code}: the control plane serves no CA")
    return check_ca(body.decode("ascii", errors="replace"), fingerprint)
