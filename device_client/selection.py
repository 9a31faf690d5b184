"""The saved form of a selection adapter, for SDK users: re-exported from `splitft.methods.adapter`.

A method's device half (`splitft/methods/<name>/device.py`) imports nothing from this package: it
works on a `splitft.methods.port.SplitView` that `SplitModel` builds, whose `trunk` is the session's
`RemoteTrunk` (it implements the methods' `TrunkPort`) and whose `anchored` is the model's
`ForwardContext.anchored`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from device_client.autograd import ForwardContext
from device_client.trunk import RemoteTrunk
from splitft.methods.adapter import HEAD_FILE, load_selected, save_selected
from splitft.methods.port import SplitView

__all__ = ["HEAD_FILE", "load_selected", "save_selected", "split_view"]


def split_view(
    model: Any, trunk: RemoteTrunk, context: ForwardContext, overrides: dict[str, Any]
) -> SplitView:
    """A selection-method `SplitModel` as a method's device half sees it (splitft.methods.port)."""
    assert model.root is not None
    return SplitView(
        model=model,
        root=model.root,
        root_prefix="root",
        entry_name=f"{model.family.blocks_path}.{model.spec.trunk_start}",
        model_dir=Path(model.model_dir),
        overrides=overrides,
        trunk=trunk,
        anchored=context.anchored,
    )
