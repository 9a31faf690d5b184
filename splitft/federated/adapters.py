"""Aggregate peft LoRA adapter directories into one global adapter, with NumPy only.

Each input is a directory peft wrote (``save_pretrained``): ``adapter_config.json`` and
``adapter_model.safetensors``. The tensors are read with ``safetensors.numpy`` (no torch), averaged
key by key (FedAvg or AirComp), and written with the first directory's config. LoRA factors A and B
are averaged separately, as SplitLoRA and FedAvg-on-LoRA do: the mean of the products B_k A_k is
not the product of the means, which is the usual price of federating the factors.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from splitft.errors import InvalidArgument
from splitft.federated.aggregate import Channel, aircomp_round, fedavg
from splitft.federated.checks import StateDict
from splitft.federated.server import ServerOptimizer, server_step
from splitft.federated.shared_trunk import latest_trunk, read_trunk_marks, split_shared

logger = logging.getLogger(__name__)

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
METHODS = ("fedavg", "aircomp")
TRUNK_MODES = ("averaged", "shared")
# Fields that change which tensors exist, their shapes or how they are scaled: adapters must agree.
AGREEING_FIELDS = (
    "peft_type",
    "r",
    "lora_alpha",
    "target_modules",
    "modules_to_save",
    "layers_to_transform",
    "layers_pattern",
    "rank_pattern",
    "alpha_pattern",
    "use_rslora",
    "use_dora",
)


@dataclass(frozen=True)
class AdapterAggregate:
    """What ``aggregate_adapter_files`` wrote and how the aggregation went."""

    out_path: Path
    participants: tuple[int, ...]  # indices into ``paths`` of the adapters in the aggregate
    # ||aggregate - FedAvg of all adapters|| / ||FedAvg of all adapters||: 0 for FedAvg, AirComp's
    # error otherwise (of the aggregate, with or without a reference, before any server step)
    relative_error: float


def aggregate_adapter_files(
    paths: Sequence[str | Path],
    weights: Sequence[float],
    out_path: str | Path,
    *,
    method: str = "fedavg",
    channel: Channel | None = None,
    seed: int | None = None,
    trunk: str = "averaged",
    reference: str | Path | None = None,
    server: ServerOptimizer | None = None,
    before_reference: str | Path | None = None,
) -> AdapterAggregate:
    """Aggregate the peft adapters in ``paths`` into one written to ``out_path``.

    ``weights``: one per adapter (example counts, say). ``method``: "fedavg" or "aircomp" (then
    ``channel`` gives the radio and ``seed`` the draws). The adapters must agree on AGREEING_FIELDS
    of their configs and on their tensors' names and shapes; ``out_path`` gets the first adapter's
    ``adapter_config.json`` and the aggregated ``adapter_model.safetensors``. Raises InvalidArgument
    naming the path, field or tensor at fault.

    ``trunk="shared"``: the uploads' trunk parts are exports of ONE shared trunk adapter (marked,
    ``splitft.federated.shared_trunk``): the device parts are aggregated and the trunk part is the
    latest export's. Without any marked upload, the whole adapters are aggregated (and a warning
    logged).

    ``reference``: the adapter directory the round started from (the previous round's global
    adapter, or round 0's initial one), holding the aggregated keys with their shapes. With AirComp
    the devices then transmit their UPDATES, adapter - reference (the noise scales with the updates,
    not with LoRA A's random initialisation), and the result is reference + their estimated mean.

    ``server``: the server's step after aggregation (FedAvgM, ``splitft.federated.server``) from
    ``reference`` (no step without one); ``before_reference`` is the adapter the round before started
    from, which carries the momentum (None: none carried). With a shared trunk only the device parts
    are stepped: the trunk part is the edge's own, already stepped there.
    """
    for name, value, allowed in (("method", method, METHODS), ("trunk", trunk, TRUNK_MODES)):
        if value not in allowed:
            raise InvalidArgument(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    directories = _check_paths(paths, out_path)
    configs = [_read_config(path) for path in directories]
    _check_configs_agree(configs, directories)
    states = [_read_weights(path) for path in directories]
    start, before = (
        _read_weights(_check_paths([path], out_path)[0]) if path is not None else None
        for path in (reference, before_reference)
    )
    marks = [read_trunk_marks(path / WEIGHTS_FILE) for path in directories] if trunk == "shared" else []
    trunk_state: StateDict = {}
    if trunk == "shared" and latest_trunk(marks) is not None:
        states, trunk_state = split_shared(states, marks)
    elif trunk == "shared":
        logger.warning("no upload carries a shared trunk adapter's marks: averaging whole adapters")
    result = aggregate_states(states, list(weights), method, channel, seed, start)
    stepped = server_step(result.state, start, server or ServerOptimizer(), before_previous=before)
    out = _write({**stepped, **trunk_state}, directories[0], Path(out_path))
    logger.info("aggregated %d adapters (%s) into %s", len(directories), method, out)
    return AdapterAggregate(
        out_path=out, participants=result.participants, relative_error=result.relative_error
    )


@dataclass(frozen=True)
class StateAggregate:
    """``aggregate_states``' result: the aggregate and where its error comes from."""

    state: StateDict
    participants: tuple[int, ...]  # indices of the states in the aggregate
    relative_error: float  # ||state - FedAvg of all|| / ||FedAvg of all||
    dropout_error: float  # ||FedAvg of the participants - FedAvg of all|| / ||FedAvg of all||: the part
    # of the error the devices left out (deep fade) make, with no noise
    noise_error: float  # ||state - FedAvg of the participants|| / ||FedAvg of all||: the channel noise's


def aggregate_states(
    states: list[StateDict],
    weights: Sequence[float],
    method: str,
    channel: Channel | None,
    seed: int | None,
    reference: StateDict | None = None,
) -> StateAggregate:
    """FedAvg or AirComp of state dicts; with a ``reference`` (the round's starting adapter) AirComp
    transmits the updates ``state - reference`` and returns reference + their estimated mean."""
    if method == "fedavg":
        return StateAggregate(fedavg(states, weights), tuple(range(len(states))), 0.0, 0.0, 0.0)
    if channel is None:
        raise InvalidArgument("method 'aircomp' needs a channel (splitft.federated.Channel)")
    start = _reference_for(reference, states[0]) if reference is not None else None
    signals = states if start is None else [_minus(state, start) for state in states]
    result = aircomp_round(
        signals,
        weights,
        snr_db=channel.snr_db,
        fading=channel.fading,
        truncation=channel.truncation,
        power_limit=channel.power_limit,
        seed=seed,
    )
    state = result.state
    if start is not None:  # back in each upload's dtype (float32 from peft), as without a reference
        state = {key: (start[key] + value).astype(states[0][key].dtype) for key, value in state.items()}
    target = fedavg(states, weights)
    chosen = fedavg([states[k] for k in result.participants], [weights[k] for k in result.participants])
    scale = _norm(target)
    return StateAggregate(
        state,
        result.participants,
        relative_error(state, target),
        _distance(chosen, target) / scale if scale > 0 else 0.0,
        _distance(state, chosen) / scale if scale > 0 else 0.0,
    )


def _reference_for(reference: StateDict, like: StateDict) -> dict[str, np.ndarray]:
    """The reference's tensors of ``like``'s keys in float64; InvalidArgument naming a missing key or
    a shape that differs (a reference of another layout would shift every device's update)."""
    out = {}
    for key, array in like.items():
        if key not in reference:
            raise InvalidArgument(f"the reference adapter has no tensor {key!r}")
        if reference[key].shape != array.shape:
            raise InvalidArgument(
                f"the reference adapter's {key!r} has shape {list(reference[key].shape)}, "
                f"the uploads' {list(array.shape)}"
            )
        out[key] = reference[key].astype(np.float64)
    return out


def _minus(state: StateDict, start: dict[str, np.ndarray]) -> StateDict:
    """state - start, key by key, in float64 (the update a device transmits)."""
    return {key: state[key].astype(np.float64) - start[key] for key in state}


def _distance(a: StateDict, b: StateDict) -> float:
    """||a - b|| over all keys of ``b``, in float64."""
    return math.sqrt(sum(float(np.square(a[k].astype(np.float64) - b[k]).sum()) for k in b))


def _norm(state: StateDict) -> float:
    return math.sqrt(sum(float(np.square(v.astype(np.float64)).sum()) for v in state.values()))


def relative_error(estimate: StateDict, target: StateDict) -> float:
    """||estimate - target|| / ||target|| over all keys of ``target`` (0 when both are zero)."""
    distance, norm = _distance(estimate, target), _norm(target)
    return distance / norm if norm > 0 else (0.0 if distance == 0 else math.inf)


def _check_paths(paths: Sequence[str | Path], out_path: str | Path) -> list[Path]:
    """Adapter directories that hold both files; ``out_path`` is none of them."""
    if isinstance(paths, (str, Path)) or not isinstance(paths, Sequence) or not paths:
        raise InvalidArgument("paths must be a non-empty sequence of adapter directories")
    directories = [Path(p) for p in paths]
    for directory in directories:
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (directory / name).is_file():
                raise InvalidArgument(f"adapter directory {directory} has no {name}")
    out = Path(out_path).resolve()
    if any(directory.resolve() == out for directory in directories):
        raise InvalidArgument(f"out_path {out_path} is one of the input adapters; write elsewhere")
    return directories


def _read_config(directory: Path) -> dict[str, Any]:
    try:
        config = json.loads((directory / CONFIG_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidArgument(f"{directory / CONFIG_FILE} is not readable JSON: {exc}") from None
    if not isinstance(config, dict):
        raise InvalidArgument(f"{directory / CONFIG_FILE} must hold a JSON object")
    return config


def _comparable(value: Any) -> Any:
    """Lists compared as sets of names (peft may save target_modules in any order)."""
    return sorted(value, key=str) if isinstance(value, list) else value


def _check_configs_agree(configs: list[dict[str, Any]], directories: list[Path]) -> None:
    for index in range(1, len(configs)):
        for field in AGREEING_FIELDS:
            first, other = configs[0].get(field), configs[index].get(field)
            if _comparable(first) != _comparable(other):
                raise InvalidArgument(
                    f"adapters disagree on {field}: {directories[0]} has {first!r}, "
                    f"{directories[index]} has {other!r}"
                )


def _read_weights(directory: Path) -> StateDict:
    path = directory / WEIGHTS_FILE
    try:
        return dict(load_file(str(path)))
    except (OSError, SafetensorError, TypeError, ValueError) as exc:
        # bfloat16 tensors land here too: NumPy has no bfloat16 (peft saves LoRA in float32).
        raise InvalidArgument(f"{path} cannot be read with safetensors.numpy: {exc}") from None


def _write(state: StateDict, config_from: Path, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(config_from / CONFIG_FILE, out / CONFIG_FILE)
    tensors = {key: np.ascontiguousarray(value) for key, value in state.items()}
    save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": "pt"})  # what peft itself writes
    return out
