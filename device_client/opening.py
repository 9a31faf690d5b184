"""Opening a split model's session: the request the edge builds its trunk view from, which method
trains (LoRA or a registered selection method), and the device's own LoRA config."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, TypeAlias

from peft import LoraConfig

from splitft.compress import DirectionCodecs
from splitft.errors import InvalidArgument
from splitft.methods.registry import method_for, method_names
from splitft.methods.wire import method_to_json
from splitft.model.lora import trunk_lora_json
from splitft.model.spans import SplitSpec
from splitft.security.tokens import unverified_claims
from splitft.v1 import dataplane_pb2 as pb

logger = logging.getLogger(__name__)

# A registered selection method's config (TaskEdgeConfig, TinyTrainConfig, ...; see splitft.methods).
SelectionConfig: TypeAlias = Any


def open_session_request(
    model: str,
    spec: SplitSpec,
    config: Any,
    codecs: DirectionCodecs,
    trunk_lora_config: LoraConfig | None,
    selection: SelectionConfig | None,
    seed: int,
    token: str | None,
    batch_shape: tuple[int, int] | None = None,
    *,
    shared_adapter: str = "",
) -> pb.OpenSessionRequest:
    """What the edge needs to build this session's view of the trunk (and to check it is the same
    model the device holds); the session id comes from the token when there is one.
    `batch_shape` (rows, tokens per row) lets the edge reserve the right memory (None: its default).
    `shared_adapter`: the key of the job's shared trunk adapter to join ("": its own adapter)."""
    batch_size, sequence_length = batch_shape or (0, 0)
    if batch_size < 0 or sequence_length < 0:
        raise InvalidArgument(f"batch_shape must be (rows, tokens) >= 0, got {batch_shape}")
    return pb.OpenSessionRequest(
        model=model,
        device_layers=spec.device_layers,
        head_layers=spec.head_layers,
        codec=str(codecs),
        trunk_lora=trunk_lora_config is not None,
        lora_config_json=trunk_lora_json(trunk_lora_config) if trunk_lora_config is not None else "",
        method_json=method_to_json(selection) if selection is not None else "",
        seed=seed,
        model_type=config.model_type,
        num_layers=spec.num_layers,
        hidden_size=config.hidden_size,
        session_id=unverified_claims(token).session if token else "",
        batch_size=batch_size,
        sequence_length=sequence_length,
        shared_adapter=shared_adapter,
    )


def resolve_method(
    lora_config: LoraConfig | None, method: SelectionConfig | LoraConfig | None
) -> tuple[LoraConfig | None, SelectionConfig | None]:
    if method is not None and lora_config is not None:
        raise InvalidArgument("give either lora_config or method, not both")
    chosen = method if method is not None else lora_config
    if isinstance(chosen, LoraConfig):
        return chosen, None
    try:
        method_for(chosen)
    except InvalidArgument:
        raise InvalidArgument(
            f"method must be a peft.LoraConfig or the config of a selection method {method_names()}, "
            f"got {type(chosen).__name__}"
        ) from None
    return None, chosen


def num_layers_of(config: Any) -> int:
    for attr in ("num_hidden_layers", "n_layer"):
        if isinstance(getattr(config, attr, None), int):
            return int(getattr(config, attr))
    raise InvalidArgument("cannot tell the number of blocks from the model config")


def device_lora_config(lora_config: LoraConfig, model_dir: str | Path) -> LoraConfig:
    config = copy.deepcopy(lora_config)
    config.base_model_name_or_path = str(model_dir)
    return config


def save_new_modules(config: LoraConfig, new_parameters: list[str]) -> LoraConfig:
    """A head the checkpoint lacks (e.g. a new classifier) must train and be saved with the adapter."""
    owners = sorted({name.rpartition(".")[0] for name in new_parameters})
    saved = set(config.modules_to_save or [])
    missing = [o for o in owners if o.rpartition(".")[2] not in saved and o not in saved]
    if not missing:
        return config
    logger.info("training and saving new head modules with the adapter: %s", ", ".join(missing))
    config = copy.deepcopy(config)
    config.modules_to_save = sorted(saved | {o.rpartition(".")[2] for o in missing})
    return config
