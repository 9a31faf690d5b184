"""Placement: which healthy edge hosts a device's session. Pure logic; the store applies it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EdgeLoad:
    """A healthy edge as placement sees it: what it serves and how many sessions it holds of how many."""

    id: str
    name: str
    models: list[str]
    capacity: int  # max sessions
    active: int  # sessions assigned or running there

    @property
    def room(self) -> int:
        """How many more sessions the edge takes."""
        return self.capacity - self.active


def choose_edge(edges: list[EdgeLoad], model: str) -> EdgeLoad | None:
    """The edge serving `model` with the most room (ties: the name, for determinism), or None."""
    candidates = [e for e in edges if model in e.models and e.room > 0]
    if not candidates:
        return None
    return max(candidates, key=lambda e: (e.room, e.name))
