"""Torch-free checks shared by the method configs (the control plane validates configs with them too)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from splitft.errors import InvalidArgument


def checked_filters(filters: Any) -> list[str]:
    """A config's `target_modules`, validated: a list or tuple of non-empty module names."""
    if not isinstance(filters, (list, tuple)) or not all(isinstance(f, str) and f for f in filters):
        raise InvalidArgument(f"target_modules must be a list of non-empty names, got {filters!r}")
    return list(filters)


def check_fields(fields: Mapping[str, Any], allowed: Iterable[str], where: str) -> None:
    """Refuse fields a config does not know, naming them (a typo must not be silently dropped)."""
    unknown = sorted(set(fields) - set(allowed))
    if unknown:
        raise InvalidArgument(f"{where} has unsupported fields {unknown}")


def check_positive_int(name: str, value: Any) -> None:
    """`value` is an int >= 1 (a bool is not)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgument(f"{name} must be a positive integer, got {value!r}")


def check_budget(name: str, value: Any) -> None:
    """`value` is a positive number; `math.inf` means no limit."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value <= 0:
        raise InvalidArgument(f"{name} must be a positive number (math.inf for no limit), got {value!r}")
