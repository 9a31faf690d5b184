"""`--model-dir DIR` or `--model-dir NAME=DIR`: the one parser the edge and the device agent share."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from splitft.errors import InvalidArgument, NotFound


def parse_model_dir(value: str) -> tuple[str, Path]:
    """`DIR` or `NAME=DIR` as (name, directory); the name defaults to the directory's base name.

    The directory must exist (NotFound otherwise); an empty name or path is InvalidArgument.
    """
    name, sep, path = value.partition("=")
    if not sep:
        name, path = Path(value).name, value
    if not name or not path:
        raise InvalidArgument(f"--model-dir expects DIR or NAME=DIR, got {value!r}")
    directory = Path(path)
    if not directory.is_dir():
        raise NotFound(f"--model-dir {value!r}: no such directory")
    return name, directory


def parse_model_dirs(values: Sequence[str]) -> dict[str, Path]:
    """Every `--model-dir` value, by model name; a name given twice or no value at all is refused."""
    out: dict[str, Path] = {}
    for value in values:
        name, directory = parse_model_dir(value)
        if name in out:
            raise InvalidArgument(f"--model-dir names model {name!r} twice; use NAME=DIR to tell them apart")
        out[name] = directory
    if not out:
        raise InvalidArgument("give at least one --model-dir")
    return out
