"""Writing files that hold secrets (or sit next to them) without ever exposing them.

One helper for every writer of key material (certificates, token issuer keys, device credentials,
the generated operator key), so there is one place that gets it right.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from splitft.errors import AlreadyExists

PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644


def write_file(path: Path, data: bytes, *, force: bool, mode: int = PRIVATE_MODE) -> None:
    """Write `data` to `path` with `mode`, never visible under a looser mode, even briefly.

    Without `force` the file is created exclusively: an existing file, or a symlink even a dangling
    one, is refused (O_EXCL does not follow links). With `force` a temporary file (created 0600 by
    mkstemp) in the same directory replaces the old entry atomically: a symlink at `path` is
    replaced itself, never written through, and a crash leaves the old or the new file whole.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if not force:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode & PRIVATE_MODE)
        except FileExistsError:
            raise AlreadyExists(f"refusing to overwrite {path} (pass --force to replace it)") from None
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(path, mode)  # the umask may have narrowed a public file's mode
        return
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_private_file(path: Path, data: bytes, *, force: bool) -> None:
    """`write_file` readable by the owner only (0600)."""
    write_file(path, data, force=force, mode=PRIVATE_MODE)
