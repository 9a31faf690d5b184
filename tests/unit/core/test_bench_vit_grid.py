"""`bench vit`'s learning-rate grid: sorted, distinct multipliers, and the edge a chosen rate sits on."""

from __future__ import annotations

import pytest

from splitft.bench.vit.config import VitBenchConfig
from splitft.bench.vit.run import grid_edge, markdown_table
from splitft.errors import InvalidArgument


def test_default_grid_reaches_x30_and_is_the_same_for_every_method() -> None:
    config = VitBenchConfig()
    assert config.lr_multipliers == (1 / 3, 1.0, 3.0, 10.0, 30.0)
    assert set(config.lr) == set(config.methods)


def test_multipliers_are_sorted_and_must_be_distinct_and_positive() -> None:
    assert VitBenchConfig(lr_multipliers=(3.0, 1.0)).lr_multipliers == (1.0, 3.0)
    for bad in ((), (1.0, 1.0), (0.0, 1.0), (-1.0,)):
        with pytest.raises(InvalidArgument, match="lr_multipliers"):
            VitBenchConfig(lr_multipliers=bad)


def test_grid_edge_flags_the_ends_only_when_there_was_a_choice() -> None:
    grid = (1 / 3, 1.0, 3.0, 10.0, 30.0)
    assert grid_edge(30.0, grid) == "top"
    assert grid_edge(1 / 3, grid) == "bottom"
    assert [grid_edge(m, grid) for m in (1.0, 3.0, 10.0)] == [None, None, None]
    assert grid_edge(1.0, (1.0,)) is None


def test_markdown_table_shows_the_multiplier_and_the_edge() -> None:
    row = {
        "method": "lora",
        "budget_share": None,
        "matched_entries": None,
        "entries": 10,
        "budget": None,
        "lr": 0.45,
        "lr_multiplier": 30.0,
        "lr_edge": "top",
        "seeds": [0],
        "test_before": {"mean": 0.2},
        "test": {"mean": 0.8, "std": 0.0, "min": 0.8, "max": 0.8},
        "validation": {"mean": 0.7},
    }
    table = markdown_table({"backbone": {"parameters": 100}, "tasks": {"digits": {"rows": [row]}}})
    assert "| 0.45 (x30, top edge) |" in table
    assert "| 0.45 (x30) |" in markdown_table(
        {"backbone": {"parameters": 100}, "tasks": {"digits": {"rows": [{**row, "lr_edge": None}]}}}
    )
