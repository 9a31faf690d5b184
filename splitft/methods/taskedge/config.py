"""TaskEdge's config, torch-free: the dataclass, its checks, and its JSON forms (whole, and wire share).

The control plane has no torch; it validates TaskEdge configs with these same functions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from splitft.errors import InvalidArgument
from splitft.methods.checks import check_fields, checked_filters

NAME = "taskedge"


@dataclass
class TaskEdgeConfig:
    """How many weights TaskEdge trains and where it looks for them."""

    # Share of ALL model parameters (embeddings and heads included) to train; the paper uses < 0.1%.
    budget_fraction: float = 0.001
    # (N, M): at most N of every M consecutive input columns per row (the pattern sparse tensor
    # cores accelerate), a constraint on the budgeted k per row: it never raises the count.
    n_m: tuple[int, int] | None = None
    # Module-name filters (exact name or dotted suffix, as in peft); None: every Linear/Conv1D in
    # the transformer blocks, so embeddings and task heads never take budget.
    target_modules: list[str] | None = None

    def __post_init__(self) -> None:
        fraction = self.budget_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
            raise InvalidArgument(f"budget_fraction must be a number, got {type(fraction).__name__}")
        if not 0.0 < fraction <= 1.0:
            raise InvalidArgument(f"budget_fraction must be in (0, 1], got {fraction}")
        if self.n_m is not None:
            self.n_m = checked_n_m(self.n_m)
        if self.target_modules is not None:
            self.target_modules = checked_filters(self.target_modules)


def checked_n_m(n_m: Any) -> tuple[int, int]:
    """An N:M pair, validated: two integers with 1 <= N <= M."""
    if not isinstance(n_m, (tuple, list)) or len(n_m) != 2:
        raise InvalidArgument(f"n_m must be a pair (N, M), got {n_m!r}")
    n, m = n_m
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (n, m)):
        raise InvalidArgument(f"n_m must hold two integers, got {n_m!r}")
    if not 1 <= n <= m:
        raise InvalidArgument(f"n_m needs 1 <= N <= M, got N={n}, M={m}")
    return n, m


def config_to_json(config: TaskEdgeConfig) -> dict[str, Any]:
    """The whole config as a JSON object."""
    fields = asdict(config)
    fields["n_m"] = list(config.n_m) if config.n_m else None
    return fields


def config_from_json(fields: dict[str, Any]) -> TaskEdgeConfig:
    """A config from a JSON object (as `config_to_json` writes it); InvalidArgument names what is wrong."""
    check_fields(fields, ("budget_fraction", "n_m", "target_modules"), "a taskedge config")
    n_m = fields.get("n_m")
    return TaskEdgeConfig(**{**fields, "n_m": tuple(n_m) if isinstance(n_m, list) else n_m})


# The trunk's share (OpenSession's method_json): the edge selects its own entries with the same k.
_WIRE_FIELDS = ("target_modules", "n_m")


def to_wire(config: TaskEdgeConfig) -> dict[str, Any]:
    """The fields the edge needs to score the trunk's layers."""
    return {"target_modules": config.target_modules, "n_m": list(config.n_m) if config.n_m else None}


def from_wire(fields: dict[str, Any]) -> TaskEdgeConfig:
    """The trunk's config from a device's `method_json` fields (the budget stays on the device)."""
    check_fields(fields, _WIRE_FIELDS, f"method_json for {NAME}")
    n_m = fields.get("n_m")
    return TaskEdgeConfig(target_modules=fields.get("target_modules"), n_m=tuple(n_m) if n_m else None)
