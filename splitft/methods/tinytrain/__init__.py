"""TinyTrain (Kwon et al., ICML 2024, arXiv 2307.09988): task-adaptive sparse update under budgets.

One folder: `config` (the dataclass and its JSON forms, torch-free), `cost` (the cost model),
`saved` (the activations it measures), `fisher` (the algorithm on one model: Fisher potentials,
greedy choice), `device` (the device half across a split),
`trunk` (the edge's half). Importing this package registers the method as "tinytrain" and imports
no torch; the other names load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from splitft.methods.lazy import lazy_exports
from splitft.methods.registry import SplitMethod, register_method
from splitft.methods.tinytrain import config
from splitft.methods.tinytrain.config import TinyTrainConfig, TinyTrainTrunk

METHOD = register_method(
    SplitMethod(
        name=config.NAME,
        config_cls=TinyTrainConfig,
        to_wire=config.to_wire,
        from_wire=config.from_wire,
        calibrate="splitft.methods.tinytrain.device:calibrate",
        trunk_scorer="splitft.methods.tinytrain.trunk:TinyTrainScorer",
        config_to_json=config.config_to_json,
        config_from_json=config.config_from_json,
    )
)

if TYPE_CHECKING:  # the real types for type checkers; at run time each loads on first use
    from splitft.methods.tinytrain.cost import LayerCost as LayerCost
    from splitft.methods.tinytrain.cost import SelectionCost as SelectionCost
    from splitft.methods.tinytrain.cost import selection_cost as selection_cost
    from splitft.methods.tinytrain.cost import sided_cost as sided_cost
    from splitft.methods.tinytrain.device import tinytrain_split as tinytrain_split
    from splitft.methods.tinytrain.fisher import FisherPass as FisherPass
    from splitft.methods.tinytrain.fisher import LossFn as LossFn
    from splitft.methods.tinytrain.fisher import TinyTrainSelection as TinyTrainSelection
    from splitft.methods.tinytrain.fisher import fisher_pass as fisher_pass
    from splitft.methods.tinytrain.fisher import fisher_potentials as fisher_potentials
    from splitft.methods.tinytrain.fisher import layer_costs as layer_costs
    from splitft.methods.tinytrain.fisher import layer_scores as layer_scores
    from splitft.methods.tinytrain.fisher import mean_tokens as mean_tokens
    from splitft.methods.tinytrain.fisher import potentials_from_squares as potentials_from_squares
    from splitft.methods.tinytrain.fisher import select_tinytrain as select_tinytrain
    from splitft.methods.tinytrain.fisher import squared_sample_sums as squared_sample_sums
    from splitft.methods.tinytrain.fisher import tinytrain_masks as tinytrain_masks
    from splitft.methods.tinytrain.trunk import TinyTrainScorer as TinyTrainScorer

_COST = ("LayerCost", "SelectionCost", "selection_cost", "sided_cost")
_FISHER = (
    "FisherPass",
    "LossFn",
    "TinyTrainSelection",
    "fisher_pass",
    "fisher_potentials",
    "layer_costs",
    "layer_scores",
    "mean_tokens",
    "potentials_from_squares",
    "select_tinytrain",
    "squared_sample_sums",
    "tinytrain_masks",
)
__getattr__ = lazy_exports(
    __name__,
    {
        **dict.fromkeys(_FISHER, "fisher"),
        **dict.fromkeys(_COST, "cost"),
        "tinytrain_split": "device",
        "TinyTrainScorer": "trunk",
    },
)
__all__ = [
    "METHOD",
    "TinyTrainConfig",
    "TinyTrainTrunk",
    *_FISHER,
    *_COST,
    "tinytrain_split",
    "TinyTrainScorer",
]
