"""Shared helpers for the control-plane tests: settings, PostgreSQL scratch databases, REST shortcuts."""

from __future__ import annotations

import io
import os
import secrets
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from splitft_control.schemas import JobCreate
from splitft_control.settings import ControlSettings

# Strong enough for check_secrets (16+ characters, not a default), so tests run outside dev mode.
OPERATOR_KEY = "sfk_test-operator-key-0123456789"
EDGE_SECRET = "test-edge-enrollment-secret-0123"
MODEL = "tiny-bert"

# The `test` database is only a door: each run creates (and drops) its own database next to it.
PG_ADMIN_URL = os.environ.get("SPLITFT_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


def control_settings(data_dir: Path, **overrides: Any) -> ControlSettings:
    """Settings pinned field by field, so SPLITFT_* variables of the caller's shell cannot leak in."""
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "db_url": None,
        "certs_dir": None,
        "dev_mode": False,
        "operator_key": OPERATOR_KEY,
        "edge_secret": EDGE_SECRET,
    }
    values.update(overrides)
    return ControlSettings(**values)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


STORE_TABLES = (
    "secagg_members",
    "secagg_rounds",
    "metrics",
    "session_closures",
    "sessions",
    "rounds",
    "jobs",
    "devices",
    "edges",
    "api_keys",
    "plans",
)  # children first, for deletes


def job_body(
    devices: list[str], *, model: str = MODEL, name: str = "job", **overrides: Any
) -> dict[str, Any]:
    """A valid POST /v1/jobs body; also, as a dict, the spec the store keeps."""
    body: dict[str, Any] = {
        "name": name,
        "model": model,
        "device_layers": 1,
        "lora": {"r": 4, "target_modules": ["query", "value"]},
        "steps": 3,
        "devices": devices,
    }
    body.update(overrides)
    return JobCreate.model_validate(body).model_dump(mode="json")


def tar_gz(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def adapter_archive() -> bytes:
    """The smallest upload check_adapter_archive accepts (its content is not parsed)."""
    return tar_gz({"adapter_config.json": b'{"r": 4}', "adapter_model.safetensors": b"\0" * 64})


# --- PostgreSQL ------------------------------------------------------------------------------------


def postgres_unreachable_reason() -> str | None:
    """None when PostgreSQL answers at PG_ADMIN_URL, else why not (the skip reason)."""
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:  # any failure to connect means: this machine has no PostgreSQL for us
        return f"PostgreSQL unreachable at {PG_ADMIN_URL}: {exc}"
    return None


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh, empty database for one test module; yields its SQLAlchemy URL and drops it after."""
    import psycopg

    name = f"splitft_test_{secrets.token_hex(6)}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- REST shortcuts ----------------------------------------------------------------------------------


def app_on(engine: str, tmp_path: Path) -> Iterator[TestClient]:
    """The control-plane app (no lifespan) on SQLite, or on a scratch PostgreSQL database (skipped,
    with the reason, where none answers); the body of a fixture parametrized over both engines."""
    import pytest

    from splitft_control.app import create_app

    if engine == "sqlite":
        yield TestClient(create_app(control_settings(tmp_path)))
        return
    reason = postgres_unreachable_reason()
    if reason is not None:
        pytest.skip(reason)
    with postgres_database() as url:
        client = TestClient(create_app(control_settings(tmp_path, db_url=url)))
        yield client
        client.app.state.control.store.engine.dispose()  # type: ignore[attr-defined]  # before the drop


def register_edge(
    client: TestClient, name: str, *, models: tuple[str, ...] = (MODEL,), max_sessions: int = 4
) -> dict[str, Any]:
    """POST /v1/edges/register with the edge secret; returns the response body."""
    body = {
        "name": name,
        "address": f"127.0.0.1:{5000 + len(name)}",
        "models": list(models),
        "capacity": {"max_sessions": max_sessions},
    }
    response = client.post("/v1/edges/register", json=body, headers=bearer(EDGE_SECRET))
    assert response.status_code == 200, response.text
    return response.json()


def add_device(client: TestClient, name: str) -> str:
    """Create a device as the operator and enroll it; returns its device credential."""
    created = client.post("/v1/devices", json={"name": name}, headers=bearer(OPERATOR_KEY))
    assert created.status_code == 201, created.text
    enrolled = client.post(
        "/v1/devices/enroll", json={"enrollment_token": created.json()["enrollment_token"]}
    )
    assert enrolled.status_code == 200, enrolled.text
    return enrolled.json()["credential"]


def create_job(client: TestClient, devices: list[str], **overrides: Any) -> dict[str, Any]:
    response = client.post("/v1/jobs", json=job_body(devices, **overrides), headers=bearer(OPERATOR_KEY))
    assert response.status_code == 201, response.text
    return response.json()
