"""`bench vit` budgets: TaskEdge's targets and k per row, and the LoRA shape that matches them.

TaskEdge gives every output row of every target Linear the same k >= 1 entries, so its smallest
selection is one entry per row: rows / parameters, about 1 / in_features. Over every Linear of a
block that is 0.4% of this backbone (hidden 96), so 0.05% is out of reach; TaskEdge's paper reaches
0.1% on ViT-B, whose rows are 768 to 3,072 long. So the targets here are the Linears with the longest
rows, the MLP's down-projections (`mlp.fc2`, in = `intermediate`): one entry per row is then ~0.05%. The
matched budget at a nominal share is the k x rows closest to share x backbone parameters.

LoRA may go anywhere in the blocks: the (rank, module kinds, last n blocks) whose size,
rank x (in + out) summed over the modules, comes closest to that budget; ties go to more modules,
then the lower rank, then query and value first (`LORA_PREFERENCE`). peft gets the full module
names, so "last n blocks" is exact.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass

from torch import nn

from splitft.bench.vit.config import BUDGET_TOLERANCE
from splitft.methods.common import find_target_modules, linear_shape

MAX_LORA_RANK = 64
# Where LoRA goes first among equally close shapes: its paper's query and value, then the rest.
LORA_PREFERENCE = ("attention.q_proj", "attention.v_proj", "attention.k_proj", "attention.o_proj", "mlp.fc1")
DOWN_PROJECTION = "mlp.fc2"  # relative to a block: the MLP's second Linear (in = intermediate)


@dataclass(frozen=True)
class LoraShape:
    rank: int
    modules: list[str]  # full module names, as peft's target_modules
    kinds: list[str]  # the modules' names inside a block
    blocks: int  # the last `blocks` blocks
    parameters: int


@dataclass(frozen=True)
class Budget:
    """One nominal share of the backbone and what each method trains at it."""

    share: float
    nominal: int  # floor(share x backbone parameters)
    k: int  # TaskEdge's entries per row
    entries: int  # k x rows: the matched budget
    lora: LoraShape

    def summary(self, backbone: int) -> dict[str, object]:
        return {
            "share": self.share,
            "nominal_entries": self.nominal,
            "taskedge_k_per_row": self.k,
            "matched_entries": self.entries,
            "matched_share": round(self.entries / backbone, 6),
            "lora": {
                "rank": self.lora.rank,
                "module_kinds": self.lora.kinds,
                "last_blocks": self.lora.blocks,
                "parameters": self.lora.parameters,
                **ratio(self.lora.parameters, self.entries),
            },
        }


def _split_name(name: str) -> tuple[int, str]:
    """`prefix.<block>.<kind>` -> (block, kind)."""
    match = re.search(r"\.(\d+)\.(.+)$", name)
    if match is None:
        raise ValueError(f"{name!r} is not inside a numbered block")
    return int(match.group(1)), match.group(2)


def taskedge_targets(model: nn.Module) -> list[str]:
    """Every block's MLP down-projection (full names, exact: no `attention.output.dense`)."""
    return [n for n in find_target_modules(model) if _split_name(n)[1] == DOWN_PROJECTION]


def _preference(kind: str) -> tuple[int, str]:
    return (LORA_PREFERENCE.index(kind) if kind in LORA_PREFERENCE else len(LORA_PREFERENCE), kind)


def lora_shape(model: nn.Module, budget: int) -> LoraShape:
    """The LoRA shape closest to `budget` parameters (see the module docstring)."""
    names = find_target_modules(model)
    where = {n: _split_name(n) for n in names}
    blocks = sorted({b for b, _ in where.values()})
    kinds = sorted({k for _, k in where.values()}, key=_preference)
    size = {n: sum(linear_shape(model.get_submodule(n))) for n in names}
    best: tuple[float, int, int, LoraShape] | None = None
    for count in range(len(kinds), 0, -1):
        for subset in itertools.combinations(kinds, count):
            for last in range(1, len(blocks) + 1):
                chosen = [n for n in names if where[n][1] in subset and where[n][0] in blocks[-last:]]
                per_rank = sum(size[n] for n in chosen)
                for rank in {
                    max(1, min(MAX_LORA_RANK, r)) for r in (budget // per_rank, budget // per_rank + 1)
                }:
                    params = rank * per_rank
                    key = (abs(math.log(params / budget)), -len(chosen), rank)
                    if best is None or key < best[:3]:
                        best = (*key, LoraShape(rank, chosen, list(subset), last, params))
    if best is None:
        raise ValueError("no Linear module in the blocks")
    return best[3]


def plan_budgets(model: nn.Module, backbone: int, shares: tuple[float, ...]) -> list[Budget]:
    """Each share's matched budget (TaskEdge's k x rows closest to it) and LoRA shape."""
    rows = sum(linear_shape(model.get_submodule(n))[0] for n in taskedge_targets(model))
    budgets = []
    for share in shares:
        nominal = max(1, math.floor(share * backbone))
        k = max(1, round(nominal / rows))
        budgets.append(Budget(share, nominal, k, k * rows, lora_shape(model, k * rows)))
    return budgets


def ratio(entries: int, matched: int) -> dict[str, float | bool]:
    """A method's trainable entries against the matched budget, and whether within 5%."""
    value = entries / matched
    return {"ratio": round(value, 4), "within_tolerance": abs(value - 1.0) <= BUDGET_TOLERANCE}
