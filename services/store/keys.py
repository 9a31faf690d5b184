"""Operator API keys: created, checked on each operator request, listed and revoked."""

from __future__ import annotations

from sqlalchemy import func, select

from splitft.errors import AlreadyExists, NotFound
from splitft_control.models import ApiKey, utcnow
from splitft_control.store.base import StoreBase, get_row, hash_secret, new_id, new_secret


class ApiKeyStore(StoreBase):
    """Operator API keys; only their hashes are stored, the key itself is shown once."""

    def create_api_key(self, *, name: str, key: str | None = None) -> tuple[ApiKey, str]:
        """Store a new key (a fresh one unless `key` is given); AlreadyExists if that key is stored."""
        key = key or new_secret("sfk")
        with self.tx() as s:
            if s.scalar(select(ApiKey).where(ApiKey.key_hash == hash_secret(key))) is not None:
                raise AlreadyExists("this API key already exists")
            row = ApiKey(id=new_id(), name=name, key_hash=hash_secret(key))
            s.add(row)
        return row, key

    def api_key_valid(self, *, key: str) -> bool:
        """Whether `key` is a stored key that no operator has revoked."""
        with self.tx() as s:
            row = s.scalar(select(ApiKey).where(ApiKey.key_hash == hash_secret(key)))
            return row is not None and row.revoked_at is None

    def list_api_keys(self) -> list[ApiKey]:
        """Every key, revoked ones included, oldest first."""
        with self.tx() as s:
            return list(s.scalars(select(ApiKey).order_by(ApiKey.created_at)))

    def revoke_api_key(self, *, key_id: str) -> None:
        """Revoke a key for good (the row stays, for the audit trail); NotFound for an unknown id."""
        with self.tx() as s:
            row = get_row(s, ApiKey, key_id)
            if row is None:
                raise NotFound(f"no API key {key_id!r}")
            row.revoked_at = utcnow()

    def count_api_keys(self) -> int:
        """How many keys are stored (the bootstrap key is created only when there are none)."""
        with self.tx() as s:
            return int(s.scalar(select(func.count()).select_from(ApiKey)) or 0)
