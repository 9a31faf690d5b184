"""Parameter-selection methods: train a task-chosen sparse subset of frozen weights.

TaskEdge picks entries (the same number per output neuron, by weight x input-norm importance);
TinyTrain picks whole output channels of the most informative, cheapest layers under memory and
compute budgets. Both return boolean `[out, in]` masks that `apply_masks` turns into trainable
sparse deltas; `save_sparse_deltas` / `load_sparse_deltas` / `merge_sparse_deltas` ship them.
"""

from __future__ import annotations

from splitft.methods.common import find_target_modules
from splitft.methods.sparse import (
    SparseDeltaLinear,
    apply_masks,
    load_sparse_deltas,
    merge_sparse_deltas,
    read_sparse_deltas,
    save_sparse_deltas,
    sparse_modules,
    sparse_state_dict,
)
from splitft.methods.taskedge import (
    TaskEdgeConfig,
    budget_entries,
    collect_input_norms,
    importance,
    select_taskedge,
    taskedge_masks,
    taskedge_scores,
)
from splitft.methods.tinytrain import (
    FisherPass,
    LayerCost,
    TinyTrainConfig,
    TinyTrainSelection,
    fisher_pass,
    fisher_potentials,
    layer_costs,
    layer_scores,
    select_tinytrain,
    selection_cost,
    tinytrain_masks,
)

__all__ = [
    "FisherPass",
    "LayerCost",
    "SparseDeltaLinear",
    "TaskEdgeConfig",
    "TinyTrainConfig",
    "TinyTrainSelection",
    "apply_masks",
    "budget_entries",
    "collect_input_norms",
    "find_target_modules",
    "fisher_pass",
    "fisher_potentials",
    "importance",
    "layer_costs",
    "layer_scores",
    "load_sparse_deltas",
    "merge_sparse_deltas",
    "read_sparse_deltas",
    "save_sparse_deltas",
    "select_taskedge",
    "select_tinytrain",
    "selection_cost",
    "sparse_modules",
    "sparse_state_dict",
    "taskedge_masks",
    "taskedge_scores",
    "tinytrain_masks",
]
