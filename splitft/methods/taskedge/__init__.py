"""TaskEdge (Hu et al., arXiv 2504.03718): train < 0.1% of the weights, chosen per task.

One folder: `config` (the dataclass and its JSON forms, torch-free), `scoring` (the algorithm on
one model), `device` (the device half across a split), `trunk` (the edge's half). Importing this
package registers the method as "taskedge" and imports no torch; the other names load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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

if TYPE_CHECKING:  # the real types for type checkers; at run time each loads on first use
    from splitft.methods.taskedge.device import device_masks as device_masks
    from splitft.methods.taskedge.device import global_k as global_k
    from splitft.methods.taskedge.scoring import budget_entries as budget_entries
    from splitft.methods.taskedge.scoring import collect_input_norms as collect_input_norms
    from splitft.methods.taskedge.scoring import importance as importance
    from splitft.methods.taskedge.scoring import masks_from_scores as masks_from_scores
    from splitft.methods.taskedge.scoring import per_row_k as per_row_k
    from splitft.methods.taskedge.scoring import select_taskedge as select_taskedge
    from splitft.methods.taskedge.scoring import square_sums as square_sums
    from splitft.methods.taskedge.scoring import taskedge_masks as taskedge_masks
    from splitft.methods.taskedge.scoring import taskedge_scores as taskedge_scores
    from splitft.methods.taskedge.trunk import TaskEdgeScorer as TaskEdgeScorer

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
