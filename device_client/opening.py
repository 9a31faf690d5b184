"""Opening a split model's session: the request the edge builds its trunk view from, which method
trains (LoRA or a registered selection method), and the device's own LoRA config."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

from peft import LoraConfig

from device_client.adapter_load import adapter_lora_config
from device_client.connection import EdgeConnection
from device_client.retry import RetryPolicy
from device_client.trunk import RemoteTrunk
from splitft.compress import DirectionCodecs
from splitft.errors import InvalidArgument
from splitft.methods.registry import method_for, method_names
from splitft.methods.wire import method_to_json
from splitft.model.lora import trunk_lora_json
from splitft.model.placement import Placement, ResolvedPlacement, claim_cuda_autograd
from splitft.model.quantize import check_quantize
from splitft.model.spans import SplitSpec
from splitft.security.tokens import unverified_claims
from splitft.v1 import dataplane_pb2 as pb

logger = logging.getLogger(__name__)

# A registered selection method's config (TaskEdgeConfig, TinyTrainConfig, ...; see splitft.methods).
SelectionConfig: TypeAlias = Any


@dataclass(frozen=True)
class OpenedWith:
    """The `SplitModel.from_pretrained` arguments a session was opened with (seed resolved), so a
    checkpoint can open the same session again on any edge (`device_client.resume`)."""

    model_dir: str
    model: str
    device_layers: int
    head_layers: int
    lora_config: LoraConfig | None
    trunk_lora: bool
    codec: str  # canonical (`DirectionCodecs.__str__`)
    seed: int
    selection: bool = False  # a selection method trains (no checkpoints for those)
    config_overrides: dict[str, Any] = field(default_factory=dict)
    stream: bool = True
    batch_shape: tuple[int, int] | None = None
    device: str = "cpu"
    dtype: str = "float32"
    quantize: str = "none"
    shared_trunk_adapter: str = ""  # a federated job's shared trunk adapter joined ("": its own)
    privacy: dict[str, Any] = field(default_factory=dict)  # PrivacyConfig's fields ({}: all off)


def device_placement(
    device: str, dtype: str, quantize: str, selection: SelectionConfig | None
) -> ResolvedPlacement:
    """Where the device's spans run, checked against this machine and what trains; the CUDA
    autograd claim is released when the model closes."""
    placement = Placement(device, dtype).resolve()
    check_quantize(quantize, selection=selection is not None, device=placement.device)
    claim_cuda_autograd("device", placement.device)
    return placement


def open_session_request(
    opened: OpenedWith,
    spec: SplitSpec,
    config: Any,
    codecs: DirectionCodecs,
    trunk_lora_config: LoraConfig | None,
    selection: SelectionConfig | None,
    token: str | None,
) -> pb.OpenSessionRequest:
    """What the edge needs to build this session's view of the trunk (and to check it is the same
    model the device holds); the session id comes from the token when there is one.
    `opened.batch_shape` (rows, tokens per row) lets the edge reserve the right memory (None: its
    default)."""
    batch_size, sequence_length = opened.batch_shape or (0, 0)
    if batch_size < 0 or sequence_length < 0:
        raise InvalidArgument(f"batch_shape must be (rows, tokens) >= 0, got {opened.batch_shape}")
    return pb.OpenSessionRequest(
        model=opened.model,
        device_layers=spec.device_layers,
        head_layers=spec.head_layers,
        codec=str(codecs),
        trunk_lora=trunk_lora_config is not None,
        lora_config_json=trunk_lora_json(trunk_lora_config) if trunk_lora_config is not None else "",
        method_json=method_to_json(selection) if selection is not None else "",
        seed=opened.seed,
        model_type=config.model_type,
        num_layers=spec.num_layers,
        hidden_size=config.hidden_size,
        session_id=unverified_claims(token).session if token else "",
        batch_size=batch_size,
        sequence_length=sequence_length,
        shared_adapter=opened.shared_trunk_adapter,
    )


def open_trunk(
    edge: EdgeConnection,
    request: pb.OpenSessionRequest,
    codecs: DirectionCodecs,
    seed: int,
    *,
    stream: bool,
    retry: RetryPolicy | None,
) -> RemoteTrunk:
    """Open the session on the edge and its client. OpenSession itself is not retried: a retry
    after a lost answer would open a second session (docs/resilience.md)."""
    opened = edge.call("OpenSession", request)
    return RemoteTrunk(edge, opened, codecs, seed=seed, use_stream=stream, retry=retry)


def resolve_method(
    lora_config: LoraConfig | None,
    method: SelectionConfig | LoraConfig | None,
    adapter: str | Path | None = None,
) -> tuple[LoraConfig | None, SelectionConfig | None]:
    """(LoRA config, selection config) from `from_pretrained`'s arguments; with `adapter`, the
    adapter's own LoRA config (one given as well must agree with it)."""
    if method is not None and lora_config is not None:
        raise InvalidArgument("give either lora_config or method, not both")
    if adapter is not None:
        return adapter_lora_config(adapter, method if method is not None else lora_config), None
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
