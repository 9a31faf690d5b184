"""Validation of uploaded adapter archives (a gzip'd tar of a peft adapter directory)."""

from __future__ import annotations

import io
import tarfile

from splitft.errors import InvalidArgument

REQUIRED = {"adapter_config.json", "adapter_model.safetensors"}


def check_adapter_archive(data: bytes) -> None:
    """InvalidArgument unless `data` is a .tar.gz of plain files holding a peft adapter."""
    if not data.startswith(b"\x1f\x8b"):
        raise InvalidArgument("adapter upload must be a gzip'd tar (application/gzip)")
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            members = tar.getmembers()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise InvalidArgument(f"adapter upload is not a readable tar.gz: {exc}") from None
    names = set()
    for member in members:
        name = member.name.removeprefix("./")
        if not member.isfile() or name.startswith("/") or ".." in name.split("/") or "/" in name:
            raise InvalidArgument(f"adapter archive may hold only top-level files, found {member.name!r}")
        names.add(name)
    missing = REQUIRED - names
    if missing:
        raise InvalidArgument(f"adapter archive lacks {sorted(missing)}")
