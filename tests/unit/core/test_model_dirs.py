"""`--model-dir DIR` / `NAME=DIR` (splitft/model/dirs.py): one parser for the edge and the device agent."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_server.registry import ModelRegistry
from splitft.errors import InvalidArgument, NotFound
from splitft.model.dirs import parse_model_dir, parse_model_dirs


def test_parse_model_dirs(tmp_path: Path) -> None:
    (tmp_path / "minilm").mkdir()
    assert parse_model_dirs([f"bert={tmp_path / 'minilm'}", str(tmp_path / "minilm")]) == {
        "bert": tmp_path / "minilm",
        "minilm": tmp_path / "minilm",
    }
    with pytest.raises(NotFound):
        parse_model_dirs([f"x={tmp_path / 'absent'}"])
    with pytest.raises(InvalidArgument, match="twice"):
        parse_model_dirs([f"a={tmp_path / 'minilm'}", f"a={tmp_path / 'minilm'}"])


def test_a_trailing_slash_names_the_model_by_its_folder(tmp_path: Path) -> None:
    (tmp_path / "minilm").mkdir()
    assert parse_model_dir(f"{tmp_path / 'minilm'}/") == ("minilm", tmp_path / "minilm")


@pytest.mark.parametrize(
    ("values", "error", "message"),
    [
        (["=DIR"], InvalidArgument, "--model-dir expects DIR or NAME=DIR, got '=DIR'"),
        (["bert="], InvalidArgument, "--model-dir expects DIR or NAME=DIR, got 'bert='"),
        ([""], InvalidArgument, "--model-dir expects DIR or NAME=DIR, got ''"),
        (["bert=/no/such/dir"], NotFound, "--model-dir 'bert=/no/such/dir': no such directory"),
        ([], InvalidArgument, "give at least one --model-dir"),
    ],
)
def test_bad_model_dirs_get_one_wording(values: list[str], error: type[Exception], message: str) -> None:
    with pytest.raises(error) as caught:
        parse_model_dirs(values)
    assert caught.value.message == message  # type: ignore[attr-defined]


def test_the_edge_and_the_agent_refuse_a_name_given_twice_alike(tmp_path: Path) -> None:
    """The edge's registry goes through the same parser, before loading any trunk."""
    (tmp_path / "a" / "bert").mkdir(parents=True)
    (tmp_path / "b" / "bert").mkdir(parents=True)
    twice = [str(tmp_path / "a" / "bert"), str(tmp_path / "b" / "bert")]
    expected = "--model-dir names model 'bert' twice; use NAME=DIR to tell them apart"
    with pytest.raises(InvalidArgument) as from_edge:
        ModelRegistry.from_dirs(twice)
    with pytest.raises(InvalidArgument) as from_parser:
        parse_model_dirs(twice)
    assert from_edge.value.message == from_parser.value.message == expected
