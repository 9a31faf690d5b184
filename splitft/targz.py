"""Reproducible .tar.gz archives of a few files: the adapters devices upload and the control plane serves.

The same files give the same bytes (no timestamps, fixed modes). Gzip's level is 1, not its
default 9: adapter weights compress as well at 1 (0.189 of their size both ways on a TinyTrain
upload's sparse deltas) and level 9 took 160 times as long on them (66 s against 0.41 s for 8 MB
under a load average of 17, 2026-11-30), which made a job wait minutes for its upload.
"""

from __future__ import annotations

import gzip
import io
import tarfile
from collections.abc import Iterable

GZIP_LEVEL = 1


def pack_files(files: Iterable[tuple[str, bytes]]) -> bytes:
    """`(name, data)` pairs as a .tar.gz of plain files, in the order given."""
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0, compresslevel=GZIP_LEVEL) as gz,
        tarfile.open(fileobj=gz, mode="w") as tar,
    ):
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()
