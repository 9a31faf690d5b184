"""Parameter-selection methods: train a task-chosen sparse subset of frozen weights.

TaskEdge picks entries (the same number per output neuron, by weight x input-norm importance);
TinyTrain picks whole output channels of the most informative, cheapest layers under memory and
compute budgets. Both return boolean `[out, in]` masks that `apply_masks` turns into trainable
sparse deltas; `save_sparse_deltas` / `load_sparse_deltas` / `merge_sparse_deltas` ship them.

Each method is one folder (`taskedge/`, `tinytrain/`) registered by name in `registry`; see
docs/methods.md, "How to add a method". Importing this package imports no torch (the control plane
validates method configs); the names below load their module on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from splitft.methods.lazy import lazy_exports
from splitft.methods.registry import SplitMethod as SplitMethod
from splitft.methods.registry import get_method as get_method
from splitft.methods.registry import method_for as method_for
from splitft.methods.registry import method_names as method_names
from splitft.methods.registry import register_method as register_method
from splitft.methods.registry import unregister_method as unregister_method

_EXPORTS = {
    "find_target_modules": "common",
    **dict.fromkeys(
        (
            "SparseDeltaLinear",
            "apply_masks",
            "load_sparse_deltas",
            "merge_sparse_deltas",
            "read_sparse_deltas",
            "save_sparse_deltas",
            "sparse_modules",
            "sparse_state_dict",
        ),
        "sparse",
    ),
    **dict.fromkeys(
        (
            "TaskEdgeConfig",
            "budget_entries",
            "collect_input_norms",
            "importance",
            "select_taskedge",
            "taskedge_masks",
            "taskedge_scores",
        ),
        "taskedge",
    ),
    **dict.fromkeys(
        (
            "FisherPass",
            "LayerCost",
            "TinyTrainConfig",
            "TinyTrainSelection",
            "fisher_pass",
            "fisher_potentials",
            "layer_costs",
            "layer_scores",
            "select_tinytrain",
            "selection_cost",
            "tinytrain_masks",
        ),
        "tinytrain",
    ),
    **dict.fromkeys(("load_selected", "save_selected"), "adapter"),
}
if TYPE_CHECKING:  # the real types for type checkers; at run time each loads on first use
    from splitft.methods.adapter import load_selected as load_selected
    from splitft.methods.adapter import save_selected as save_selected
    from splitft.methods.common import find_target_modules as find_target_modules
    from splitft.methods.sparse import SparseDeltaLinear as SparseDeltaLinear
    from splitft.methods.sparse import apply_masks as apply_masks
    from splitft.methods.sparse import load_sparse_deltas as load_sparse_deltas
    from splitft.methods.sparse import merge_sparse_deltas as merge_sparse_deltas
    from splitft.methods.sparse import read_sparse_deltas as read_sparse_deltas
    from splitft.methods.sparse import save_sparse_deltas as save_sparse_deltas
    from splitft.methods.sparse import sparse_modules as sparse_modules
    from splitft.methods.sparse import sparse_state_dict as sparse_state_dict
    from splitft.methods.taskedge import TaskEdgeConfig as TaskEdgeConfig
    from splitft.methods.taskedge import budget_entries as budget_entries
    from splitft.methods.taskedge import collect_input_norms as collect_input_norms
    from splitft.methods.taskedge import importance as importance
    from splitft.methods.taskedge import select_taskedge as select_taskedge
    from splitft.methods.taskedge import taskedge_masks as taskedge_masks
    from splitft.methods.taskedge import taskedge_scores as taskedge_scores
    from splitft.methods.tinytrain import FisherPass as FisherPass
    from splitft.methods.tinytrain import LayerCost as LayerCost
    from splitft.methods.tinytrain import TinyTrainConfig as TinyTrainConfig
    from splitft.methods.tinytrain import TinyTrainSelection as TinyTrainSelection
    from splitft.methods.tinytrain import fisher_pass as fisher_pass
    from splitft.methods.tinytrain import fisher_potentials as fisher_potentials
    from splitft.methods.tinytrain import layer_costs as layer_costs
    from splitft.methods.tinytrain import layer_scores as layer_scores
    from splitft.methods.tinytrain import select_tinytrain as select_tinytrain
    from splitft.methods.tinytrain import selection_cost as selection_cost
    from splitft.methods.tinytrain import tinytrain_masks as tinytrain_masks

__getattr__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(
    [
        *_EXPORTS,
        "SplitMethod",
        "get_method",
        "method_for",
        "method_names",
        "register_method",
        "unregister_method",
    ]
)
