"""The server's step after aggregation: FedAvg with server momentum (FedAvgM), on NumPy state dicts.

Plain FedAvg sets the global adapter to the round's aggregate. On non-IID devices whose local
updates point different ways, the aggregate moves little per round (the updates cancel), so a
federated job makes far less progress per round than one device with all the data makes in the
same number of steps. FedAvgM (Hsu, Qi, Brown 2019, "Measuring the effects of non-identical data
distribution"; Reddi et al. 2021, "Adaptive federated optimization", treat the general case) treats
the aggregate's difference from the previous global as a pseudo-gradient and takes a server step
with momentum:

    delta_r  = aggregate_r - global_{r-1}
    m_r      = momentum * m_{r-1} + delta_r          (m before the first step: 0)
    global_r = global_{r-1} + lr * m_r

With ``lr = 1`` and ``momentum = 0`` it is plain FedAvg, exactly (the aggregate is returned).

The server keeps no state of its own: ``m_{r-1}`` is recovered from the two global adapters before,
``(global_{r-1} - global_{r-2}) / lr``, which the control plane stores anyway (a round's global
adapter, and the one it started from). A round the server did not step (lost to deep fade, or
round 0 started from a fresh adapter the server never saw) therefore restarts the momentum at 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from splitft.errors import InvalidArgument
from splitft.federated.checks import StateDict

MAX_SERVER_LR = 10.0


@dataclass(frozen=True)
class ServerOptimizer:
    """The server's step size and momentum; the defaults are plain FedAvg."""

    lr: float = 1.0  # server learning rate: the multiple of the (momentum) pseudo-gradient applied
    momentum: float = 0.0  # heavy-ball momentum over rounds, in [0, 1)

    def __post_init__(self) -> None:
        check_server_optimizer(self.lr, self.momentum)

    @property
    def is_plain_fedavg(self) -> bool:
        return self.lr == 1.0 and self.momentum == 0.0


def check_server_optimizer(lr: float, momentum: float) -> None:
    """Refuse a server lr outside (0, 10] or a momentum outside [0, 1), naming the parameter."""
    for name, value in (("server_lr", lr), ("server_momentum", momentum)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InvalidArgument(f"{name} must be a finite number, got {value!r}")
    if not 0 < lr <= MAX_SERVER_LR:
        raise InvalidArgument(f"server_lr must be in (0, {MAX_SERVER_LR:g}], got {lr!r} (1: plain FedAvg)")
    if not 0 <= momentum < 1:
        raise InvalidArgument(f"server_momentum must be in [0, 1), got {momentum!r} (0: no momentum)")


def server_step(
    aggregate: Mapping[str, Any],
    previous: Mapping[str, Any] | None,
    optimizer: ServerOptimizer,
    *,
    before_previous: Mapping[str, Any] | None = None,
) -> StateDict:
    """The round's global adapter from its ``aggregate`` (module docstring).

    ``previous``: the global adapter the round started from (None: unknown, so no step can be taken
    and the aggregate is returned, as in round 0 from a fresh adapter). ``before_previous``: the one
    the round before started from (None: no momentum carried). Keys of ``aggregate`` missing from
    ``previous`` are refused; keys of ``previous`` missing from ``before_previous`` carry no momentum.
    Results keep the aggregate's dtypes (float32 for adapters).
    """
    result = {key: np.asarray(value) for key, value in aggregate.items()}
    if previous is None or optimizer.is_plain_fedavg:
        return result
    for key, value in result.items():
        if key not in previous:
            raise InvalidArgument(
                f"server step: {key!r} is in the aggregate but not in the previous global adapter"
            )
        start = np.asarray(previous[key], dtype=np.float64)
        if start.shape != value.shape:
            raise InvalidArgument(
                f"server step: {key!r} has shape {list(value.shape)} in the aggregate and "
                f"{list(start.shape)} in the previous global adapter"
            )
        velocity = value.astype(np.float64) - start
        if optimizer.momentum and before_previous is not None and key in before_previous:
            earlier = np.asarray(before_previous[key], dtype=np.float64)
            velocity += optimizer.momentum * (start - earlier) / optimizer.lr
        result[key] = (start + optimizer.lr * velocity).astype(value.dtype)
    return result
