"""Control plane settings: flags or SPLITFT_* environment variables, validated at start."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from splitft.errors import InvalidArgument

_WEAK_SECRETS = {"", "changeme", "change-me", "secret", "password", "splitft", "default", "admin"}
MIN_SECRET_LENGTH = 16


class ControlSettings(BaseSettings):
    """How the control plane runs; every field can come from SPLITFT_<NAME>."""

    model_config = SettingsConfigDict(env_prefix="SPLITFT_", extra="ignore")

    data_dir: Path = Field(Path("splitft-data"), description="SQLite file, issuer key and CA live here")
    db_url: str | None = Field(None, description="SQLAlchemy URL; default: SQLite file in data_dir")
    sqlite_synchronous: Literal["full", "normal"] = Field(
        "full",
        description="SQLite commits: full syncs each one (survives a power cut), normal only at "
        "checkpoints (a killed process still loses nothing; a power cut may lose the last commits)",
    )
    dev_mode: bool = Field(False, description="allow weak or missing secrets, for a local experiment")
    operator_key: str | None = Field(None, description="the first operator API key (else generated once)")
    edge_secret: str | None = Field(None, description="shared secret edges enroll with")
    certs_dir: Path | None = Field(None, description="deployment CA (ca.pem, ca.key) for device CSRs")
    tls_certs_dir: Path | None = Field(
        None, description="serve HTTPS with control.pem and control.key from here (`splitft certs init`)"
    )
    heartbeat_interval: float = Field(5.0, gt=0, description="how often edges should heartbeat (s)")
    heartbeat_timeout: float = Field(20.0, gt=0, description="silence after which an edge is down (s)")
    schedule_interval: float = Field(1.0, gt=0, description="scheduler period (s)")
    token_ttl: int = Field(3600, gt=0, le=7 * 24 * 3600, description="session token lifetime (s)")
    max_adapter_bytes: int = Field(512 * 1024 * 1024, gt=0, description="largest adapter upload")
    max_adapter_unpacked_bytes: int = Field(
        1024 * 1024 * 1024, gt=0, description="most bytes one adapter upload may gunzip to"
    )
    max_adapter_members: int = Field(8, ge=2, le=1024, description="most files in one adapter archive")
    max_body_bytes: int = Field(1024 * 1024, ge=1024, description="largest JSON request body")
    max_metrics_body_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, description="largest body of POST /v1/sessions/{id}/metrics"
    )
    max_metric_points_per_session: int = Field(
        100_000, ge=1, description="metric points one session may store in all"
    )
    max_session_resumes: int = Field(
        3,
        ge=0,
        le=1000,
        description="placements after its first a session may get when its device loses its edge",
    )

    def check_secrets(self) -> None:
        """Refuse to serve with a missing, default or short secret, unless in dev mode."""
        if self.dev_mode:
            return
        for name in ("edge_secret", "operator_key"):
            value = getattr(self, name)
            if name == "operator_key" and value is None:
                continue  # generated at first start
            if value is None or value.lower() in _WEAK_SECRETS or len(value) < MIN_SECRET_LENGTH:
                raise InvalidArgument(
                    f"SPLITFT_{name.upper()} must be set to a secret of at least {MIN_SECRET_LENGTH} "
                    "characters that is not a default (or run with --dev for a local experiment)"
                )

    @property
    def database_url(self) -> str:
        """SPLITFT_DB_URL, else a SQLite file in the data dir."""
        return self.db_url or f"sqlite:///{(self.data_dir / 'control.db').resolve()}"

    @property
    def ca_dir(self) -> Path | None:
        """The deployment CA's folder: --certs-dir, else data_dir/certs or the TLS dir if it holds ca.key."""
        if self.certs_dir is not None:
            return self.certs_dir
        for default in (self.data_dir / "certs", self.tls_certs_dir):
            if default is not None and (default / "ca.key").is_file():
                return default
        return None

    def tls_files(self) -> tuple[Path, Path] | None:
        """(certificate, key) to serve HTTPS with, checked to exist; None for plaintext HTTP."""
        if self.tls_certs_dir is None:
            return None
        cert, key = self.tls_certs_dir / "control.pem", self.tls_certs_dir / "control.key"
        missing = [str(p) for p in (cert, key) if not p.is_file()]
        if missing:
            raise InvalidArgument(
                f"no {' or '.join(missing)}: run `splitft certs init --dir {self.tls_certs_dir} --host ...` "
                f"(or `splitft certs control` for an existing CA) first"
            )
        return cert, key
