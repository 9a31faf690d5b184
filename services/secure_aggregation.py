"""A secure round's masked vectors -> its global adapter, in the control plane (numpy, no torch).

The members' masked vectors (`splitft.federated.secagg`) add up, modulo 2^64, to the fixed-point sum
of their example-weighted updates: the pairwise masks cancel. Decoded and divided by the total
example count it is FedAvg (within 2^-25 per entry), written as a standard peft adapter with the
first member's config, packed as every adapter archive is. No single update is ever in the clear here.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from splitft.errors import InvalidArgument
from splitft.federated.adapters import AGREEING_FIELDS
from splitft.federated.fixedpoint import Layout
from splitft.federated.secagg import read_masked, unmask_sum
from splitft_control.aggregation import ADAPTER_FILES, pack_adapter_files

MAX_CONFIG_KEYS = 200


def check_adapter_config(config: Any) -> dict[str, Any]:
    """A member's adapter_config.json: a JSON object of peft's fields (sized by the body limit)."""
    if not isinstance(config, dict) or not config or len(config) > MAX_CONFIG_KEYS:
        raise InvalidArgument(f"adapter_config must be a JSON object of 1 to {MAX_CONFIG_KEYS} fields")
    if config.get("peft_type") != "LORA":
        raise InvalidArgument(f"adapter_config.peft_type must be 'LORA', got {config.get('peft_type')!r}")
    return config


def disagreement(first: Mapping[str, Any], other: Mapping[str, Any]) -> str | None:
    """The first field two members' adapter configs must share and do not (None when they agree)."""
    for field in AGREEING_FIELDS:
        a, b = first.get(field), other.get(field)
        if (sorted(a, key=str) if isinstance(a, list) else a) != (
            sorted(b, key=str) if isinstance(b, list) else b
        ):
            return f"{field}: {a!r} against {b!r}"
    return None


def global_adapter_from_masked(
    masked: Sequence[bytes], examples: Sequence[int], layout_json: Any, config: Mapping[str, Any]
) -> bytes:
    """The round's global adapter archive from EVERY member's masked vector and example count."""
    layout = Layout.from_json(layout_json)
    state = unmask_sum([read_masked(data, layout) for data in masked], list(examples), layout)
    with tempfile.TemporaryDirectory(prefix="splitft-secagg-") as tmp:
        root = Path(tmp)
        config_name, weights_name = ADAPTER_FILES
        (root / config_name).write_text(json.dumps(dict(config), indent=2, sort_keys=True))
        tensors = {key: np.ascontiguousarray(value) for key, value in state.items()}
        save_file(tensors, str(root / weights_name), metadata={"format": "pt"})  # what peft writes
        return pack_adapter_files(root)
