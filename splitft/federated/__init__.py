"""Federated aggregation of adapters, NumPy only (the control plane runs it without torch).

``fedavg`` is the weighted mean of state dicts; ``aircomp`` / ``aircomp_round`` simulate DEFT's
over-the-air aggregation (channel inversion under a power limit, truncation of deep fades, receiver
noise); ``aggregate_adapter_files`` applies either to peft adapter directories; ``secagg`` (with
``fixedpoint``) masks each device's update so that only their sum can be read. docs/federated.md.
"""

from __future__ import annotations

from splitft.federated.adapters import AdapterAggregate, aggregate_adapter_files
from splitft.federated.aggregate import (
    DEFAULT_TRUNCATION,
    AirCompRound,
    Channel,
    aircomp,
    aircomp_round,
    fedavg,
)

__all__ = [
    "DEFAULT_TRUNCATION",
    "AdapterAggregate",
    "AirCompRound",
    "Channel",
    "aggregate_adapter_files",
    "aircomp",
    "aircomp_round",
    "fedavg",
]
