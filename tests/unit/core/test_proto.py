"""The committed generated code is exactly what proto/generate.sh produces from dataplane.proto."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
COMMITTED = ROOT / "proto" / "splitft" / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi")


def _generated(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.name.endswith(GENERATED_SUFFIXES)}


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    # The script runs `python -m grpc_tools.protoc`: put this interpreter's bin first so it finds
    # the grpc_tools (and protoc version) of the project's environment, not a system one.
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    result = subprocess.run(
        ["bash", str(ROOT / "proto" / "generate.sh"), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    fresh = _generated(tmp_path / "splitft" / "v1")
    committed = _generated(COMMITTED)
    assert fresh, "generate.sh produced no code"
    assert sorted(fresh) == sorted(committed)
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"committed code differs from generate.sh output: {stale}; run `bash proto/generate.sh`"
