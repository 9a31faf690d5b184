"""The saved form of a selection adapter, for SDK users: re-exported from `splitft.methods.adapter`.

A method's device half (`splitft/methods/<name>/device.py`) imports nothing from this package: it
works on a `splitft.methods.port.SplitView` that `SplitModel` builds, whose `trunk` is the session's
`RemoteTrunk` (it implements the methods' `TrunkPort`) and whose `anchored` is the model's
`ForwardContext.anchored`.
"""

from __future__ import annotations

from splitft.methods.adapter import HEAD_FILE, load_selected, save_selected

__all__ = ["HEAD_FILE", "load_selected", "save_selected"]
