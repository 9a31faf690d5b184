"""Checkpoint directories on disk: written atomically, verified by a sha256 manifest, the last good
one kept.

A checkpoint is one directory `ckpt-STEP-SEQ` under a root. It is written into a hidden temporary
directory next to it (every file fsynced, then the directory), renamed into place (atomic on
POSIX), the root fsynced, and read back and verified against its manifest before older ones are
dropped: a crash at any point leaves the previous checkpoint whole, and a torn or altered one is
detected on load (the loader then falls back to the newest one that verifies). One writer per
root: concurrent writers into the same root are not supported.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path

from splitft.errors import InvalidArgument, NotFound

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = 1
_NAME = re.compile(r"ckpt-(\d{12})-(\d{4})")
_TMP = ".tmp-"


class CorruptCheckpoint(InvalidArgument):
    """A checkpoint whose manifest is missing or unreadable, or whose files do not match it."""


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoint_dirs(root: Path) -> list[Path]:
    """The checkpoints under `root`, newest (highest step, then latest written) first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _NAME.fullmatch(p.name)]
    return sorted(found, key=lambda p: p.name, reverse=True)


def _next_name(root: Path, step: int) -> str:
    same = [
        int(m.group(2)) for p in root.iterdir() if (m := _NAME.fullmatch(p.name)) and int(m.group(1)) == step
    ]
    return f"ckpt-{step:012d}-{max(same, default=-1) + 1:04d}"


def write_checkpoint(root: str | Path, step: int, files: Mapping[str, bytes], *, keep: int = 1) -> Path:
    """Write `files` as a new checkpoint of `step` under `root`; once it verifies, keep only the
    newest `keep` checkpoints. Returns the new checkpoint's directory."""
    if keep < 1:
        raise InvalidArgument(f"keep must be at least 1 (the last good checkpoint), got {keep}")
    if step < 0 or step >= 10**12:
        raise InvalidArgument(f"checkpoint step must be in [0, 10**12), got {step}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    name = _next_name(root, step)
    tmp = root / f"{_TMP}{name}-{os.getpid()}"
    final = root / name
    manifest: dict = {"format": FORMAT, "step": step, "files": {}}
    tmp.mkdir()
    try:
        for file_name, data in files.items():
            if file_name == MANIFEST or "/" in file_name or file_name.startswith("."):
                raise InvalidArgument(f"invalid checkpoint file name {file_name!r}")
            _write_synced(tmp / file_name, data)
            manifest["files"][file_name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        _write_synced(tmp / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
        _fsync_dir(tmp)
        os.rename(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    read_checkpoint(final)  # read back from disk: verified before the previous one is dropped
    _prune(root, keep, final)
    return final


def _prune(root: Path, keep: int, newest: Path) -> None:
    for old in [p for p in checkpoint_dirs(root) if p != newest][keep - 1 :]:
        shutil.rmtree(old, ignore_errors=True)
        logger.debug("dropped checkpoint %s", old)
    for stale in root.glob(f"{_TMP}*"):  # left by a writer that died mid-checkpoint
        shutil.rmtree(stale, ignore_errors=True)


def read_checkpoint(directory: str | Path) -> dict[str, bytes]:
    """The files of the checkpoint `directory`, each verified against the manifest (size and sha256);
    CorruptCheckpoint names the first mismatch."""
    directory = Path(directory)
    try:
        manifest = json.loads((directory / MANIFEST).read_bytes())
        listed = manifest["files"]
        if manifest.get("format") != FORMAT or not isinstance(listed, dict):
            raise ValueError(f"format {manifest.get('format')!r}, expected {FORMAT}")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CorruptCheckpoint(f"checkpoint {directory}: unreadable manifest ({exc})") from None
    files = {}
    for name, entry in listed.items():
        if not isinstance(name, str) or "/" in name or name.startswith(".") or not isinstance(entry, dict):
            raise CorruptCheckpoint(f"checkpoint {directory}: invalid manifest entry {name!r}")
        try:
            data = (directory / name).read_bytes()
        except OSError as exc:
            raise CorruptCheckpoint(f"checkpoint {directory}: cannot read {name}: {exc}") from None
        if len(data) != entry.get("bytes") or hashlib.sha256(data).hexdigest() != entry.get("sha256"):
            raise CorruptCheckpoint(
                f"checkpoint {directory}: {name} does not match its sha256 in the manifest"
            )
        files[name] = data
    return files


def latest_checkpoint(path: str | Path) -> tuple[Path, dict[str, bytes]]:
    """The checkpoint at `path` (a checkpoint directory, or a root holding several: the newest that
    verifies, skipping corrupt ones with a warning) and its verified files."""
    path = Path(path)
    if (path / MANIFEST).exists() or _NAME.fullmatch(path.name):
        return path, read_checkpoint(path)
    candidates = checkpoint_dirs(path)
    if not candidates:
        raise NotFound(f"no checkpoint in {path}")
    errors = []
    for directory in candidates:
        try:
            return directory, read_checkpoint(directory)
        except CorruptCheckpoint as exc:
            logger.warning("skipping corrupt checkpoint: %s", exc)
            errors.append(str(exc))
    raise CorruptCheckpoint(f"no checkpoint in {path} verifies: {'; '.join(errors[:3])}")
