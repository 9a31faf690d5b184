"""The Pareto front (splitft.plan.front) and `splitft plan front`: dominance, ties, several
objectives, bad input, and the command's JSON and usage errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from splitft.cli import main
from splitft.errors import InvalidArgument
from splitft.plan.front import dominates, pareto_front


def names(points: list[dict]) -> list[str]:
    return [p["name"] for p in points]


def test_a_point_better_in_one_objective_and_equal_in_the_other_dominates() -> None:
    points = [
        {"name": "a", "accuracy": 0.9, "memory_mb": 100},
        {"name": "b", "accuracy": 0.9, "memory_mb": 120},  # same accuracy, more memory: dominated by a
        {"name": "c", "accuracy": 0.8, "memory_mb": 100},  # same memory, less accurate: dominated by a
        {"name": "d", "accuracy": 0.95, "memory_mb": 300},  # more accurate, more memory: on the front
        {"name": "e", "accuracy": 0.7, "memory_mb": 50},  # least memory: on the front
    ]
    front = pareto_front(points, maximize=["accuracy"], minimize=["memory_mb"])
    assert names(front) == ["a", "d", "e"]


def test_equal_points_are_all_kept() -> None:
    points = [
        {"name": "a", "accuracy": 0.9, "memory_mb": 100},
        {"name": "twin", "accuracy": 0.9, "memory_mb": 100},
        {"name": "worse", "accuracy": 0.9, "memory_mb": 101},
    ]
    assert names(pareto_front(points, maximize=["accuracy"], minimize=["memory_mb"])) == ["a", "twin"]


def test_three_objectives_keep_a_point_that_is_best_in_only_one() -> None:
    points = [
        {"name": "accurate", "loss": 0.1, "memory": 500, "time": 5.0},
        {"name": "small", "loss": 0.5, "memory": 50, "time": 5.0},
        {"name": "fast", "loss": 0.5, "memory": 500, "time": 0.5},
        {"name": "dominated", "loss": 0.5, "memory": 500, "time": 5.0},
    ]
    front = pareto_front(points, minimize=["loss", "memory", "time"])
    assert names(front) == ["accurate", "small", "fast"]
    # With only two objectives the fast point is dominated by nothing either, but "dominated" still is.
    assert names(pareto_front(points, minimize=["loss", "memory"])) == ["accurate", "small"]


def test_dominates_needs_a_strict_improvement() -> None:
    assert dominates((1.0, 2.0), (1.0, 1.0))
    assert not dominates((1.0, 1.0), (1.0, 1.0))
    assert not dominates((2.0, 0.0), (1.0, 1.0))


def test_empty_input_has_an_empty_front() -> None:
    assert pareto_front([], maximize=["accuracy"]) == []


@pytest.mark.parametrize(
    ("point", "message"),
    [
        ({"name": "p", "memory_mb": 1}, "point 'p': no field 'accuracy'"),
        (
            {"name": "p", "accuracy": "high", "memory_mb": 1},
            "point 'p': field 'accuracy' must be a finite number",
        ),
        (
            {"name": "p", "accuracy": True, "memory_mb": 1},
            "point 'p': field 'accuracy' must be a finite number",
        ),
        ({"name": "p", "accuracy": float("nan"), "memory_mb": 1}, "must be a finite number"),
        ({"accuracy": 1, "memory_mb": None}, "point #0: field 'memory_mb' must be a finite number"),
    ],
)
def test_a_missing_or_non_numeric_field_names_the_point(point: dict, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message.replace("(", r"\(")):
        pareto_front([point], maximize=["accuracy"], minimize=["memory_mb"])


@pytest.mark.parametrize(
    ("maximize", "minimize", "message"),
    [
        ([], [], "at least one objective"),
        (["a"], ["a"], "both maximized and minimized"),
        (["a", "a"], [], "twice"),
    ],
)
def test_bad_objectives_are_refused(maximize: list[str], minimize: list[str], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        pareto_front([{"name": "p", "a": 1}], maximize=maximize, minimize=minimize)


# --- the command ---------------------------------------------------------------------------------


def write(tmp_path: Path, content: object) -> str:
    path = tmp_path / "points.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


def squeezed(text: str) -> str:
    """The text without whitespace: the log handler wraps long lines."""
    return "".join(text.split())


def test_front_command_prints_the_front_sorted_by_the_first_objective(tmp_path, capsys) -> None:
    points = [
        {"name": "small", "accuracy": 0.7, "memory_mb": 50, "note": 1},
        {"name": "dominated", "accuracy": 0.6, "memory_mb": 60},
        {"name": "big", "accuracy": 0.95, "memory_mb": 300},
        {"name": "mid", "accuracy": 0.9, "memory_mb": 100},
    ]
    args = ["plan", "front", "--input", write(tmp_path, points), "--maximize", "accuracy"]
    assert main([*args, "--minimize", "memory_mb"]) == 0
    assert json.loads(capsys.readouterr().out) == [
        {"name": "big", "accuracy": 0.95, "memory_mb": 300},
        {"name": "mid", "accuracy": 0.9, "memory_mb": 100},
        {"name": "small", "accuracy": 0.7, "memory_mb": 50},
    ]
    # A minimized first objective sorts smallest first.
    assert (
        main(["plan", "front", "--input", write(tmp_path, points), "--minimize", "memory_mb,accuracy"]) == 0
    )
    assert names(json.loads(capsys.readouterr().out)) == ["small", "dominated"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ([{"name": "a", "accuracy": 0.9}], "point 'a': no field 'memory_mb'"),
        ([{"name": "b", "accuracy": "0.9", "memory_mb": 1}], "point 'b': field 'accuracy' must be a finite"),
        ([{"accuracy": 0.9, "memory_mb": 1}], "point #0 has no string field 'name'"),
        (
            [{"name": "a", "accuracy": 1, "memory_mb": 1}, {"name": "a", "accuracy": 1, "memory_mb": 1}],
            "twice",
        ),
        ({"name": "a"}, "expected a JSON list of objects"),
        ([3], "point #0 is not an object"),
        ("[{", "not JSON"),
    ],
)
def test_front_command_bad_input_is_a_usage_error_naming_the_point(
    tmp_path, capsys, content, message
) -> None:
    args = ["plan", "front", "--input", write(tmp_path, content), "--maximize", "accuracy"]
    assert main([*args, "--minimize", "memory_mb"]) == 2
    assert squeezed(message) in squeezed(capsys.readouterr().err)


def test_front_command_refuses_a_missing_file_and_no_objective(tmp_path, capsys) -> None:
    assert main(["plan", "front", "--input", str(tmp_path / "none.json"), "--maximize", "a"]) == 2
    assert "nosuchfile" in squeezed(capsys.readouterr().err)
    assert main(["plan", "front", "--input", write(tmp_path, [])]) == 2
    assert "atleastoneobjective" in squeezed(capsys.readouterr().err)
