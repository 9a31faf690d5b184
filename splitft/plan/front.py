"""The Pareto front of a set of points: the ones no other point dominates.

A point dominates another when it is at least as good in every objective and strictly better in
one. Points equal in every objective do not dominate each other, so ties are all kept.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from splitft.errors import InvalidArgument

P = TypeVar("P", bound=Mapping[str, Any])


@dataclass(frozen=True)
class Objectives:
    """Which fields to maximize and which to minimize (at least one, none in both)."""

    maximize: tuple[str, ...] = ()
    minimize: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.maximize and not self.minimize:
            raise InvalidArgument("name at least one objective to maximize or minimize")
        both = sorted(set(self.maximize) & set(self.minimize))
        if both:
            raise InvalidArgument(f"an objective cannot be both maximized and minimized: {', '.join(both)}")
        names = [*self.maximize, *self.minimize]
        if len(set(names)) != len(names):
            raise InvalidArgument(f"an objective is named twice: {', '.join(names)}")

    @property
    def names(self) -> tuple[str, ...]:
        """Every objective, maximized ones first, in the order given."""
        return (*self.maximize, *self.minimize)

    def score(self, point: Mapping[str, Any], label: str) -> tuple[float, ...]:
        """The point's objectives turned so that larger is better (minimized ones negated); a missing,
        non-numeric or non-finite field is InvalidArgument naming the point (`label`) and the field."""
        values = []
        for name in self.names:
            if name not in point:
                raise InvalidArgument(f"point {label}: no field {name!r}")
            value = point[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InvalidArgument(f"point {label}: field {name!r} must be a finite number, got {value!r}")
            values.append(float(value) if name in self.maximize else -float(value))
        return tuple(values)


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether score `a` dominates score `b` (both larger-is-better): >= everywhere, > somewhere."""
    return all(x >= y for x, y in zip(a, b, strict=True)) and any(x > y for x, y in zip(a, b, strict=True))


def pareto_front(points: Sequence[P], maximize: Sequence[str] = (), minimize: Sequence[str] = ()) -> list[P]:
    """The points of `points` no other point dominates, in their input order (ties all kept).

    Each point is a mapping holding every objective as a finite number; one that does not is
    InvalidArgument naming it (by its `name` field when it has one, else its index). O(n^2): the
    planner's fronts are a few hundred points at most."""
    objectives = Objectives(tuple(maximize), tuple(minimize))
    for i, p in enumerate(points):
        if not isinstance(p, Mapping):
            raise InvalidArgument(f"point #{i} is not an object of named fields: {type(p).__name__}")
    scores = [objectives.score(p, _label(p, i)) for i, p in enumerate(points)]
    return [
        p
        for i, p in enumerate(points)
        if not any(dominates(other, scores[i]) for j, other in enumerate(scores) if j != i)
    ]


def _label(point: Mapping[str, Any], index: int) -> str:
    name = point.get("name")
    return repr(name) if isinstance(name, str) else f"#{index}"
