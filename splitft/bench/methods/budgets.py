"""`bench methods` budgets: one matched entry budget per task, and the LoRA shape that meets it.

TaskEdge trains the same k entries in every output row of every target Linear, so its sizes are
the multiples of the row count R; the matched budget is the multiple closest to the nominal one
(`budget_fraction` x all parameters). LoRA then takes the (rank, target-module subset) whose size
is closest to that matched budget; TinyTrain its memory budget (finer channel ratios; see
`builders.size_tinytrain_budget`); the one-process baselines use TaskEdge's k exactly.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from torch import nn

from splitft.bench.methods.config import BUDGET_TOLERANCE
from splitft.methods.common import linear_shape

MAX_LORA_RANK = 64


@dataclass(frozen=True)
class LoraShape:
    rank: int
    targets: list[str]  # module-name suffixes, as peft matches them
    parameters: int


def taskedge_k(nominal: int, rows: int) -> int:
    """Entries per row whose total (k x rows) is closest to `nominal`, at least 1."""
    return max(1, round(nominal / rows))


def taskedge_fraction(matched: int, total: int) -> float:
    """The `budget_fraction` whose `floor(fraction x total)` is exactly `matched`."""
    return min(1.0, (matched + 0.5) / total)


def _peft_matches(name: str, targets: tuple[str, ...]) -> bool:
    """peft's rule for a list of target names: the full name, or a dotted suffix of it."""
    return any(name == t or name.endswith("." + t) for t in targets)


def lora_shape(model: nn.Module, names: list[str], suffixes: list[str], budget: int) -> LoraShape:
    """The rank and subset of `suffixes` whose LoRA size (rank x (in + out) summed over the modules
    peft would wrap among `names`) is closest to `budget`; ties go to more modules, then lower rank."""
    sizes = {n: sum(linear_shape(model.get_submodule(n))) for n in names}
    best: tuple[float, int, int, LoraShape] | None = None
    for count in range(len(suffixes), 0, -1):
        for subset in itertools.combinations(suffixes, count):
            per_rank = sum(size for n, size in sizes.items() if _peft_matches(n, subset))
            if per_rank == 0:
                continue
            for rank in {max(1, min(MAX_LORA_RANK, r)) for r in (budget // per_rank, budget // per_rank + 1)}:
                params = rank * per_rank
                key = (abs(math.log(params / budget)), -count, rank)
                if best is None or key < best[:3]:
                    best = (*key, LoraShape(rank, list(subset), params))
    if best is None:
        raise ValueError("no LoRA target module has any parameters")
    return best[3]


def budget_ratio(entries: int, matched: int) -> dict[str, float | bool]:
    """A method's entries against the matched budget: the ratio, and whether it is within 5%."""
    ratio = entries / matched
    return {"ratio": round(ratio, 4), "within_tolerance": abs(ratio - 1.0) <= BUDGET_TOLERANCE}
