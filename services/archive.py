"""Validation of uploaded adapter archives (a gzip'd tar of a peft adapter directory)."""

from __future__ import annotations

import io
import tarfile

from splitft.errors import InvalidArgument

# A peft LoRA adapter, or a selection method's sparse deltas (see docs/methods.md).
ADAPTER_LAYOUTS = (
    {"adapter_config.json", "adapter_model.safetensors"},
    {"sparse_config.json", "sparse_deltas.safetensors"},
)


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
    if not any(layout <= names for layout in ADAPTER_LAYOUTS):
        wanted = " or ".join(str(sorted(layout)) for layout in ADAPTER_LAYOUTS)
        raise InvalidArgument(
            f"adapter archive lacks the files of an adapter: {wanted}; it has {sorted(names)}"
        )
