"""How the benchmarks print their figures: a spread as text, and markdown tables with notes under them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


def spread_text(values: dict[str, float], fmt: str = "", extremes: bool = True) -> str:
    """A `spread` as the benchmark tables show it: `median [q1-q3] (min-max)`, each value in `fmt`."""
    text = f"{values['median']:{fmt}} [{values['q1']:{fmt}}-{values['q3']:{fmt}}]"
    return f"{text} ({values['min']:{fmt}}-{values['max']:{fmt}})" if extremes else text


def markdown_report(columns: Sequence[str], rows: Iterable[Sequence[Any]], notes: Sequence[str] = ()) -> str:
    """A markdown table (a header of `columns`, a line per row) and, after a blank line, `notes`."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join([*lines, "", *notes] if notes else lines)
