"""The adapter archive a session uploads (device_client/agent/archive.py)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from device_client.agent.archive import pack_adapter
from splitft.errors import FailedPrecondition


def write_adapter(directory: Path) -> dict[str, bytes]:
    files = {
        "adapter_config.json": b'{"r": 4}',
        "adapter_model.safetensors": bytes(range(256)) * 4,
        "README.md": b"notes",
    }
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return files


def test_adapter_archive_round_trips_and_passes_the_server_check(tmp_path: Path) -> None:
    from splitft_control.archive import check_adapter_archive

    files = write_adapter(tmp_path / "adapter")
    archive = pack_adapter(tmp_path / "adapter")
    check_adapter_archive(archive)  # the control plane's own validation of /complete uploads
    assert pack_adapter(tmp_path / "adapter") == archive  # reproducible bytes
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        tar.extractall(tmp_path / "out", filter="data")
    files.pop("README.md")  # not part of an adapter: left out, the control plane would refuse it
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == files
    (tmp_path / "adapter" / "adapter_model.safetensors").unlink()
    with pytest.raises(FailedPrecondition, match="lacks adapter_model.safetensors"):
        pack_adapter(tmp_path / "adapter")
