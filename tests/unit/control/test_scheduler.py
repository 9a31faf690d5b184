"""Placement rules of the scheduler (pure logic: no database, no HTTP)."""

from __future__ import annotations

from splitft_control.scheduler import EdgeLoad, choose_edge


def edge(name: str, models: list[str], capacity: int = 4, active: int = 0) -> EdgeLoad:
    return EdgeLoad(id=f"id-{name}", name=name, models=models, capacity=capacity, active=active)


def test_the_edge_with_the_most_room_for_the_model_wins() -> None:
    edges = [edge("a", ["bert"], 4, 3), edge("b", ["bert"], 4, 1), edge("c", ["llama"], 8, 0)]
    chosen = choose_edge(edges, "bert")
    assert chosen is not None and chosen.name == "b"


def test_ties_are_broken_by_name_so_placement_is_deterministic() -> None:
    edges = [edge("a", ["bert"]), edge("c", ["bert"]), edge("b", ["bert"])]
    assert [choose_edge(list(order), "bert").name for order in (edges, edges[::-1])] == ["c", "c"]  # type: ignore[union-attr]


def test_no_edge_when_none_serves_the_model_or_all_are_full() -> None:
    assert choose_edge([edge("a", ["llama"])], "bert") is None
    assert choose_edge([edge("a", ["bert"], 2, 2), edge("b", ["bert"], 1, 3)], "bert") is None
    assert choose_edge([], "bert") is None


def test_room_is_capacity_minus_active() -> None:
    assert edge("a", ["bert"], 5, 2).room == 3
