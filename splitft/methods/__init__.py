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
