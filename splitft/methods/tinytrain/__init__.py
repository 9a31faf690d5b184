"""TinyTrain (Kwon et al., ICML 2024, arXiv 2307.09988): task-adaptive sparse update under budgets.

One folder: `config` (the dataclass and its JSON forms, torch-free), `fisher` (the algorithm on one
model: Fisher potentials, cost model, greedy choice), `device` (the device half across a split),
`trunk` (the edge's half). Importing this package registers the method as "tinytrain" and imports
no torch; the other names load on first use.
"""

from __future__ import annotations

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

_FISHER = (
    "FisherPass",
    "LayerCost",
    "LossFn",
    "TinyTrainSelection",
    "fisher_pass",
    "fisher_potentials",
    "layer_costs",
    "layer_scores",
    "mean_tokens",
    "potentials_from_squares",
    "select_tinytrain",
    "selection_cost",
    "squared_sample_sums",
    "tinytrain_masks",
)
__getattr__ = lazy_exports(
    __name__, {**dict.fromkeys(_FISHER, "fisher"), "tinytrain_split": "device", "TinyTrainScorer": "trunk"}
)
__all__ = ["METHOD", "TinyTrainConfig", "TinyTrainTrunk", *_FISHER, "tinytrain_split", "TinyTrainScorer"]
