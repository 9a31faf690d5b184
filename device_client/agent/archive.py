"""The adapter a session uploads to /complete: its files as a reproducible .tar.gz."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from device_client.adapter_load import ADAPTER_WEIGHTS
from splitft.errors import FailedPrecondition
from splitft.targz import pack_files

# What /complete accepts in the archive: a peft LoRA adapter, or a selection method's sparse deltas
# (with, when the head is new, head.safetensors); nothing else (splitft_control.archive).
ADAPTER_LAYOUTS = (
    ("adapter_config.json", ADAPTER_WEIGHTS),
    ("sparse_config.json", "sparse_deltas.safetensors"),
)
ADAPTER_OPTIONAL = ((), ("head.safetensors",))


def pack_adapter(directory: str | Path) -> bytes:
    """The adapter's files as a .tar.gz, byte-identical for identical files; other files in the
    directory (a peft README.md, say) are left out, since the control plane accepts only these."""
    root = Path(directory)
    layouts = [[name for name in layout if not (root / name).is_file()] for layout in ADAPTER_LAYOUTS]
    index = min(range(len(layouts)), key=lambda i: len(layouts[i]))
    if layouts[index]:
        raise FailedPrecondition(f"adapter directory {root} lacks {', '.join(layouts[index])}")
    wanted = {*ADAPTER_LAYOUTS[index], *ADAPTER_OPTIONAL[index]}
    paths = sorted(p for p in root.iterdir() if p.is_file() and p.name in wanted)
    return pack_files((path.name, path.read_bytes()) for path in paths)


def unpack_adapter(archive: bytes, directory: Path) -> Path:
    """A global adapter archive from the control plane, unpacked into `directory` (only the files
    of a peft LoRA adapter, plain files, no paths: anything else is refused)."""
    wanted = set(ADAPTER_LAYOUTS[0])
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
            members = tar.getmembers()
            names = {m.name for m in members}
            if names != wanted or not all(m.isfile() for m in members):
                raise FailedPrecondition(f"the control plane sent an adapter archive of {sorted(names)[:4]}")
            tar.extractall(directory, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise FailedPrecondition(f"the control plane sent an unreadable adapter archive: {exc}") from None
    return directory
