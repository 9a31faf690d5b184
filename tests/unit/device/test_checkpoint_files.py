"""Checkpoint directories (`device_client.checkpoint_files`): atomic, verified, the last good one kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from device_client.checkpoint_files import (
    MANIFEST,
    CorruptCheckpoint,
    checkpoint_dirs,
    latest_checkpoint,
    read_checkpoint,
    write_checkpoint,
)
from splitft.errors import InvalidArgument, NotFound


def _files(step: int) -> dict[str, bytes]:
    return {"meta.json": json.dumps({"step": step}).encode(), "device.safetensors": bytes([step]) * 100}


def test_written_checkpoints_verify_and_only_the_newest_are_kept(tmp_path: Path) -> None:
    for step in range(4):
        written = write_checkpoint(tmp_path, step, _files(step), keep=2)
        assert written.name == f"ckpt-{step:012d}-0000"
        assert read_checkpoint(written) == _files(step)
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["ckpt-000000000003-0000", "ckpt-000000000002-0000"]
    manifest = json.loads((tmp_path / "ckpt-000000000003-0000" / MANIFEST).read_text())
    assert manifest["step"] == 3 and set(manifest["files"]) == {"meta.json", "device.safetensors"}
    assert list(tmp_path.glob(".tmp-*")) == []


def test_the_same_step_twice_gets_a_new_sequence_number_and_latest_is_the_last_written(
    tmp_path: Path,
) -> None:
    write_checkpoint(tmp_path, 5, _files(5), keep=3)
    second = write_checkpoint(tmp_path, 5, {**_files(5), "meta.json": b"{}"}, keep=3)
    assert second.name == "ckpt-000000000005-0001"
    directory, files = latest_checkpoint(tmp_path)
    assert directory == second and files["meta.json"] == b"{}"


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "device.safetensors").write_bytes(b"x" * 100), "does not match its sha256"),
        (lambda d: (d / "device.safetensors").write_bytes(b"x" * 99), "does not match its sha256"),
        (lambda d: (d / "meta.json").unlink(), "cannot read meta.json"),
        (lambda d: (d / MANIFEST).write_text("{"), "unreadable manifest"),
        (lambda d: (d / MANIFEST).unlink(), "unreadable manifest"),
        (lambda d: (d / MANIFEST).write_text('{"format": 9, "files": {}}'), "unreadable manifest"),
        (
            lambda d: (d / MANIFEST).write_text('{"format": 1, "files": {"../x": {}}}'),
            "invalid manifest entry",
        ),
    ],
)
def test_a_damaged_checkpoint_is_skipped_for_the_previous_one(tmp_path: Path, damage, message) -> None:
    older = write_checkpoint(tmp_path, 1, _files(1), keep=2)
    newer = write_checkpoint(tmp_path, 2, _files(2), keep=2)
    damage(newer)
    with pytest.raises(CorruptCheckpoint, match=message):
        read_checkpoint(newer)
    assert latest_checkpoint(tmp_path) == (older, _files(1))
    with pytest.raises(CorruptCheckpoint, match=message):
        latest_checkpoint(newer)  # named directly: no fallback
    damage(older)
    with pytest.raises(CorruptCheckpoint, match="no checkpoint in .* verifies"):
        latest_checkpoint(tmp_path)


def test_a_write_that_fails_midway_leaves_the_previous_checkpoint_whole(tmp_path: Path) -> None:
    good = write_checkpoint(tmp_path, 1, _files(1))
    # The second file's name is refused after the first file was written to the temporary directory.
    with pytest.raises(InvalidArgument, match="invalid checkpoint file name"):
        write_checkpoint(tmp_path, 2, {"meta.json": b"{}", "../escape": b""})
    assert checkpoint_dirs(tmp_path) == [good] and list(tmp_path.glob(".tmp-*")) == []
    assert latest_checkpoint(tmp_path) == (good, _files(1))


def test_a_crashed_writers_temporary_directory_is_never_loaded_and_is_cleared(tmp_path: Path) -> None:
    good = write_checkpoint(tmp_path, 1, _files(1))
    stale = tmp_path / ".tmp-ckpt-000000000002-0000-999"
    stale.mkdir()
    (stale / "meta.json").write_bytes(b"half")
    assert latest_checkpoint(tmp_path)[0] == good
    write_checkpoint(tmp_path, 2, _files(2))
    assert not stale.exists() and [p.name for p in checkpoint_dirs(tmp_path)] == ["ckpt-000000000002-0000"]


def test_bad_arguments_and_empty_roots(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="keep must be at least 1"):
        write_checkpoint(tmp_path, 1, _files(1), keep=0)
    with pytest.raises(InvalidArgument, match="step must be in"):
        write_checkpoint(tmp_path, -1, _files(1))
    with pytest.raises(InvalidArgument, match="invalid checkpoint file name"):
        write_checkpoint(tmp_path, 1, {MANIFEST: b"{}"})
    with pytest.raises(NotFound, match="no checkpoint in"):
        latest_checkpoint(tmp_path / "nothing")
