"""Devices: an operator creates one (one-time enrollment token); the device enrolls for a credential."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from fastapi import APIRouter, Response, status

from splitft.errors import FailedPrecondition, InvalidArgument
from splitft.plan.choice import DeviceClass
from splitft.security.certs import sign_device_key
from splitft.security.trust import bind_enrollment_token
from splitft_control import revocation
from splitft_control.deps import Operator, State, StoreDep
from splitft_control.models import Device
from splitft_control.schemas import DeviceCreate, DeviceCreated, DeviceEnroll, DeviceEnrolled, DevicePublic

router = APIRouter(prefix="/v1/devices", tags=["devices"])


def device_public(device: Device) -> DevicePublic:
    """A device as operators see it (never its token hashes or certificate)."""
    return DevicePublic(
        id=device.id,
        name=device.name,
        status=device.status,  # type: ignore[arg-type]
        created_at=device.created_at,
        enrolled_at=device.enrolled_at,
        disabled_at=device.disabled_at,
        device_class=DeviceClass.model_validate(device.device_class) if device.device_class else None,
    )


@router.post("", response_model=DeviceCreated, status_code=status.HTTP_201_CREATED, dependencies=[Operator])
def create_device(body: DeviceCreate, store: StoreDep, state: State) -> DeviceCreated:
    """Create a pending device and return its one-time enrollment token (bound to the deployment CA's
    fingerprint when there is one). Operators only (401); 409 for a taken name, 422 for a bad one."""
    device_class = body.device_class.model_dump(mode="json") if body.device_class else None
    device, token = store.create_device(name=body.name, device_class=device_class)
    ca_dir = (
        state.settings.ca_dir
    )  # the token pins the CA the device will be handed (see splitft.security.trust)
    ca_pem = (ca_dir / "ca.pem").read_bytes() if ca_dir is not None else None
    return DeviceCreated(
        id=device.id, name=device.name, enrollment_token=bind_enrollment_token(token, ca_pem)
    )


@router.get("", response_model=list[DevicePublic], dependencies=[Operator])
def list_devices(store: StoreDep) -> list[DevicePublic]:
    """Every device with its status, by name. Operators only (401)."""
    return [device_public(d) for d in store.list_devices()]


@router.put("/{device_id}/class", response_model=DevicePublic, dependencies=[Operator])
def set_device_class(device_id: str, body: DeviceClass, store: StoreDep) -> DevicePublic:
    """Give the device its class (memory for the model, uplink and downlink in Mbit/s, and a speed
    factor or FLOP/s), which split "auto" jobs plan it for; sessions already given a plan point keep
    theirs. Operators only (401); 404 for an unknown id, 422 for a bad class."""
    return device_public(store.set_device_class(device_id=device_id, device_class=body))


@router.post("/{device_id}/disable", response_model=DevicePublic, dependencies=[Operator])
def disable_device(device_id: str, store: StoreDep) -> DevicePublic:
    """Revoke a device: its credential stops working, its open sessions fail and edges close them.
    Operators only (401); 404 for an unknown id."""
    return device_public(revocation.disable_device(store, device_id=device_id))


@router.delete("/{device_id}", status_code=status.HTTP_204_NO_CONTENT, dependencies=[Operator])
def delete_device(device_id: str, store: StoreDep) -> Response:
    """Remove a device no job names (409 otherwise: disable it, which keeps the jobs' history).
    Operators only (401); 404 for an unknown id."""
    revocation.delete_device(store, device_id=device_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def _parse_csr(csr_pem: str) -> x509.CertificateSigningRequest:
    """The device's CSR, checked: 400 unless it is PEM and self-signed by the key it carries."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
    except ValueError as exc:
        raise InvalidArgument(f"csr_pem is not a PEM certificate signing request: {exc}") from None
    if not csr.is_signature_valid:
        raise InvalidArgument("csr_pem signature does not verify")
    return csr


@router.post("/enroll", response_model=DeviceEnrolled)
def enroll_device(body: DeviceEnroll, state: State) -> DeviceEnrolled:
    """Trade the one-time enrollment token for a credential; with a CSR, also a client certificate.
    Anyone holding a token (no bearer): 401 for an unknown or used token, 400 for a bad CSR,
    409 for a CSR when this control plane has no CA to sign it."""
    csr = _parse_csr(body.csr_pem) if body.csr_pem else None
    ca_dir = state.settings.ca_dir
    if csr is not None and ca_dir is None:
        raise FailedPrecondition("this control plane has no deployment CA to sign certificates (--certs-dir)")

    def sign(name: str) -> str | None:
        """The PEM certificate for the device's CSR key, or None when no CSR was sent."""
        if csr is None or ca_dir is None:
            return None
        cert = sign_device_key(ca_dir, name, csr.public_key())
        return cert.public_bytes(serialization.Encoding.PEM).decode()

    device, credential = state.store.enroll_device(enrollment_token=body.enrollment_token, sign=sign)
    ca_pem = (ca_dir / "ca.pem").read_text() if ca_dir is not None else None
    return DeviceEnrolled(
        id=device.id,
        name=device.name,
        credential=credential,
        certificate_pem=device.certificate_pem,
        ca_pem=ca_pem,
    )
