"""TaskEdge (Hu et al., arXiv 2504.03718): train < 0.1% of the weights, chosen per task.

One folder: `config` (the dataclass and its JSON forms, torch-free), `scoring` (the algorithm on
one model), `device` (the device half across a split), `trunk` (the edge's half). Importing this
package registers the method as "taskedge" and imports no torch; the other names load on first use.
"""

from __future__ import annotations

from splitft.methods.lazy import lazy_exports
from splitft.methods.registry import SplitMethod, register_method
from splitft.methods.taskedge import config
from splitft.methods.taskedge.config import TaskEdgeConfig

METHOD = register_method(
    SplitMethod(
        name=config.NAME,
        config_cls=TaskEdgeConfig,
        to_wire=config.to_wire,
        from_wire=config.from_wire,
        calibrate="splitft.methods.taskedge.device:calibrate",
        trunk_scorer="splitft.methods.taskedge.trunk:TaskEdgeScorer",
        config_to_json=config.config_to_json,
        config_from_json=config.config_from_json,
    )
)

_SCORING = (
    "budget_entries",
    "collect_input_norms",
    "importance",
    "masks_from_scores",
    "per_row_k",
    "select_taskedge",
    "square_sums",
    "taskedge_masks",
    "taskedge_scores",
)
__getattr__ = lazy_exports(
    __name__,
    {
        **dict.fromkeys(_SCORING, "scoring"),
        "global_k": "device",
        "device_masks": "device",
        "TaskEdgeScorer": "trunk",
    },
)
__all__ = ["METHOD", "TaskEdgeConfig", *_SCORING, "global_k", "device_masks", "TaskEdgeScorer"]
