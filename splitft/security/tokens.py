"""Short-lived, Ed25519-signed session tokens.

A token says: this device may run this session of this job, on this edge, for this model, until
this time. The control plane (or `splitft tokens issue`) signs it; the edge verifies it offline with
the issuer's public key. Format: base64url(JSON claims) "." base64url(Ed25519 signature over the
first part), both without padding.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from splitft.errors import InvalidArgument, PermissionDenied, Unauthenticated

TOKEN_VERSION = 2  # 2: optional split claims (device_layers, head_layers, trunk_lora, codec)
ACCEPTED_VERSIONS = (1, 2)  # a version-1 token simply binds no split
DEFAULT_TTL_SECONDS = 3600
MAX_TOKEN_BYTES = 4096
CLOCK_SKEW_SECONDS = 30  # tolerated difference between issuer and edge clocks
METADATA_KEY = "authorization"  # gRPC metadata; value "Bearer <token>"
# Session ids name edge sessions and, on devices, record directories: never a path component.
SESSION_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def check_session_id(session_id: object) -> str:
    """`session_id` if it is 1-128 characters of [A-Za-z0-9._:-] and not "." or ".."; else InvalidArgument.

    The one validator for session ids, used by the edge (OpenSession) and the device agent (paths)."""
    if (
        not isinstance(session_id, str)
        or not SESSION_ID_PATTERN.fullmatch(session_id)
        or session_id in (".", "..")
    ):
        raise InvalidArgument('session_id must be 1-128 characters of [A-Za-z0-9._:-], not "." or ".."')
    return session_id


@dataclass(frozen=True)
class SessionClaims:
    """What a token grants."""

    session: str  # the session id the token opens and operates
    device: str  # must equal the CN of the device's client certificate
    model: str  # the model name on the edge
    edge: str = ""  # the edge id it is valid on ("" = any edge trusting the issuer)
    job: str = ""
    expires: int = 0  # unix seconds
    issued: int = 0
    nonce: str = ""
    version: int = TOKEN_VERSION
    # The job's split, bound by the control plane; None: not bound (a hand-issued or version-1 token).
    device_layers: int | None = None
    head_layers: int | None = None
    trunk_lora: bool | None = None
    codec: str | None = None  # canonical `splitft.compress` string


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def generate_issuer_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_key_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_private_key(source: str | Path | bytes) -> Ed25519PrivateKey:
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidArgument("the token issuer key must be an Ed25519 private key")
    return key


def load_public_key(source: str | Path | bytes) -> Ed25519PublicKey:
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    key = serialization.load_pem_public_key(data)
    if not isinstance(key, Ed25519PublicKey):
        raise InvalidArgument("a token issuer public key must be Ed25519")
    return key


def issue_token(
    key: Ed25519PrivateKey,
    *,
    session: str,
    device: str,
    model: str,
    edge: str = "",
    job: str = "",
    ttl_seconds: int = DEFAULT_TTL_SECONDS,
    now: float | None = None,
    split: SplitClaims | None = None,
) -> str:
    """Sign a token for one session; `split` binds the job's split, trunk LoRA flag and codec."""
    if not session or not device or not model:
        raise InvalidArgument("a session token needs a session id, a device name and a model")
    if ttl_seconds <= 0:
        raise InvalidArgument("token TTL must be positive")
    issued = int(time.time() if now is None else now)
    claims = SessionClaims(
        session=session,
        device=device,
        model=model,
        edge=edge,
        job=job,
        expires=issued + int(ttl_seconds),
        issued=issued,
        nonce=secrets.token_hex(8),
        **(asdict(split) if split is not None else {}),
    )
    payload = _b64(json.dumps(asdict(claims), sort_keys=True, separators=(",", ":")).encode())
    return f"{payload}.{_b64(key.sign(payload.encode()))}"


def unverified_claims(token: str) -> SessionClaims:
    """The claims of a token without checking its signature (for the device to read its session id)."""
    return _parse_claims(_split(token)[0])


def verify_token(token: str, issuers: list[Ed25519PublicKey], *, now: float | None = None) -> SessionClaims:
    """Claims of a valid token; Unauthenticated if it is malformed, forged or expired."""
    payload, signature = _split(token)
    signed = payload.encode()
    for issuer in issuers:
        try:
            issuer.verify(signature, signed)
            break
        except InvalidSignature:
            continue
    else:
        raise Unauthenticated("session token signature does not verify against any trusted issuer")
    claims = _parse_claims(payload)
    current = time.time() if now is None else now
    if claims.expires + CLOCK_SKEW_SECONDS < current:
        raise Unauthenticated("session token expired")
    if claims.issued - CLOCK_SKEW_SECONDS > current:
        raise Unauthenticated("session token issued in the future")
    return claims


def _split(token: str) -> tuple[str, bytes]:
    if not token or len(token) > MAX_TOKEN_BYTES or token.count(".") != 1:
        raise Unauthenticated("malformed session token")
    payload, signature = token.split(".")
    try:
        return payload, _unb64(signature)
    except (binascii.Error, ValueError):
        raise Unauthenticated("malformed session token") from None


def _parse_claims(payload: str) -> SessionClaims:
    try:
        raw = json.loads(_unb64(payload))
        claims = SessionClaims(**raw)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise Unauthenticated("malformed session token claims") from None
    if claims.version not in ACCEPTED_VERSIONS:
        raise Unauthenticated(f"unsupported session token version {claims.version}")
    text_fields = (claims.session, claims.device, claims.model, claims.edge, claims.job, claims.nonce)
    if not all(isinstance(v, str) for v in text_fields) or not isinstance(claims.expires, int):
        raise Unauthenticated("malformed session token claims")
    optional = (
        (claims.device_layers, int),
        (claims.head_layers, int),
        (claims.trunk_lora, bool),
        (claims.codec, str),
    )
    if not all(v is None or type(v) is kind for v, kind in optional):
        raise Unauthenticated("malformed session token claims")
    return claims


@dataclass(frozen=True)
class SplitClaims:
    """The job's split a token binds: the edge refuses an OpenSession that differs."""

    device_layers: int
    head_layers: int
    trunk_lora: bool
    codec: str  # canonical `splitft.compress` string


def authorize_split(claims: SessionClaims, opened: SplitClaims) -> None:
    """PermissionDenied naming the first field where an OpenSession differs from the token's split."""
    for name, value in asdict(opened).items():
        bound = getattr(claims, name)
        if bound is not None and bound != value:
            raise PermissionDenied(
                f"session token binds {name}={bound!r}; OpenSession asked for {name}={value!r}"
            )


def authorize(
    claims: SessionClaims,
    *,
    session: str,
    model: str | None = None,
    edge: str | None = None,
    peer_device: str | None = None,
) -> None:
    """PermissionDenied unless the valid token `claims` covers this call."""
    if claims.session != session:
        raise PermissionDenied("session token was issued for another session")
    if model is not None and claims.model != model:
        raise PermissionDenied(f"session token was issued for model {claims.model!r}, not {model!r}")
    if edge is not None and claims.edge and claims.edge != edge:
        raise PermissionDenied("session token was issued for another edge")
    if peer_device is not None and claims.device != peer_device:
        raise PermissionDenied("session token's device does not match the client certificate")
