"""Selection-method configs as they cross the wire (OpenSession's `method_json`), for every method.

Only the trunk's share crosses: what the edge needs to score its own layers, as each method's
`to_wire` writes it, under `"method": name`. The edge looks the name up in the registry and builds
the method's trunk config with its `from_wire`. Torch-free.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from splitft.errors import InvalidArgument
from splitft.methods.registry import SplitMethod, get_method, method_for, method_names


@dataclass(frozen=True)
class TrunkMethod:
    """A session's selection method on the edge: the method and the trunk's share of its config."""

    method: SplitMethod
    config: Any

    @property
    def name(self) -> str:
        return self.method.name

    def scorer(self, root: Any) -> Any:
        """The method's `TrunkScorer` over the session's trunk modules."""
        return self.method.trunk_half()(root, self.config)


def split_methods() -> tuple[str, ...]:
    """The selection methods that run across the split (every registered one)."""
    return method_names()


def method_to_json(config: Any) -> str:
    """The trunk's share of a method config, as `method_json`."""
    method = method_for(config)
    return json.dumps({"method": method.name, **method.to_wire(config)})


def method_from_json(text: str) -> TrunkMethod:
    """Parse and validate a device's method config; InvalidArgument names what is wrong."""
    try:
        fields: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"method_json is not valid JSON: {exc}") from None
    if not isinstance(fields, dict):
        raise InvalidArgument("method_json must be a JSON object")
    method = get_method(fields.pop("method", None))
    return TrunkMethod(method, method.from_wire(fields))
