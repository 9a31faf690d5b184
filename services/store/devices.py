"""Devices: created by an operator with a one-time enrollment token, enrolled once, authenticated."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import select, update

from splitft.errors import AlreadyExists, PermissionDenied, Unauthenticated
from splitft_control.models import Device, utcnow
from splitft_control.store.base import StoreBase, hash_secret, new_id, new_secret


class DeviceStore(StoreBase):
    """Devices and their credentials (only hashes of tokens and credentials are stored)."""

    def create_device(self, *, name: str, device_class: dict[str, Any] | None = None) -> tuple[Device, str]:
        """A pending device (with its class, `splitft.plan.choice.DeviceClass` as JSON, when given) and
        its one-time enrollment token; AlreadyExists for a taken name."""
        token = new_secret("sft")
        with self.tx() as s:
            if s.scalar(select(Device).where(Device.name == name)) is not None:
                raise AlreadyExists(f"device {name!r} already exists")
            device = Device(
                id=new_id(), name=name, enrollment_hash=hash_secret(token), device_class=device_class
            )
            s.add(device)
        return device, token

    def enroll_device(
        self, *, enrollment_token: str, sign: Callable[[str], str | None]
    ) -> tuple[Device, str]:
        """Trade a one-time enrollment token for a device credential (and, via `sign`, a certificate).

        The token is consumed by one conditional UPDATE, the transaction's first statement, so two
        concurrent requests with the same token cannot both win: on PostgreSQL the second waits for
        the first's row lock and then matches no row; on SQLite it waits for the write lock."""
        credential = new_secret("sfd")
        with self.tx() as s:
            consumed = s.execute(
                update(Device)
                .where(Device.enrollment_hash == hash_secret(enrollment_token), Device.status == "pending")
                .values(
                    enrollment_hash=None,
                    credential_hash=hash_secret(credential),
                    status="enrolled",
                    enrolled_at=utcnow(),
                )
                .execution_options(synchronize_session=False)
            )
            if consumed.rowcount != 1:
                raise Unauthenticated("unknown or already used enrollment token")
            device = s.scalar(select(Device).where(Device.credential_hash == hash_secret(credential)))
            assert device is not None  # updated just above, in this transaction
            device.certificate_pem = sign(device.name)
        return device, credential

    def authenticate_device(self, *, credential: str) -> Device:
        """The device holding `credential`: Unauthenticated if none, PermissionDenied if disabled."""
        with self.tx() as s:
            device = s.scalar(select(Device).where(Device.credential_hash == hash_secret(credential)))
            if device is None:
                raise Unauthenticated("unknown device credential")
            if device.status == "disabled":
                raise PermissionDenied(f"device {device.name!r} is disabled by an operator")
            return device

    def list_devices(self) -> list[Device]:
        """Every device, by name."""
        with self.tx() as s:
            return list(s.scalars(select(Device).order_by(Device.name)))
