"""Session checkpoints, written by the device: the whole training state of a split model.

A checkpoint holds everything that decides the next steps: the device's trainable parameters and
optimizer state, the LR scheduler's state, torch's RNG on the device (CPU, and the CUDA device's
when the spans run there), the device's wire encoders (error feedback, random streams), the step
count and the caller's data cursor, and the edge's half exported over `ExportSessionState`
(trunk adapter, its optimizer, step count, the session's dropout generator and the edge's
encoders; `edge_server.session_state`). `device_client.resume` opens a new session from it, on
the same edge or another, and training continues as if never interrupted.

Files of a checkpoint directory (`device_client.checkpoint_files` writes them atomically with a
sha256 manifest): `meta.json`, `device.safetensors`, `trunk.state` (the edge's `SessionState`
message) and `trunk.safetensors` (its tensors). No pickle: loading a checkpoint runs no code.
Gradients and kept graphs are not state: checkpoints are taken between optimizer steps.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from peft import LoraConfig
from safetensors.torch import save

from device_client.checkpoint_files import write_checkpoint
from device_client.optim import SplitOptimizer
from device_client.trunk import RemoteTrunk
from splitft.errors import FailedPrecondition, InvalidArgument
from splitft.wire.serde import optimizer_groups_to_json

if TYPE_CHECKING:
    from device_client.model import SplitModel

logger = logging.getLogger(__name__)

FORMAT = 1
META, DEVICE, TRUNK_STATE, TRUNK_TENSORS = (
    "meta.json",
    "device.safetensors",
    "trunk.state",
    "trunk.safetensors",
)
Scheduler = Any  # a torch LR scheduler (anything with state_dict / load_state_dict)


def lora_to_dict(config: LoraConfig | None) -> dict[str, Any] | None:
    """A LoRA config as plain JSON values (sets become sorted lists), for `meta.json`."""
    if config is None:
        return None
    return {k: sorted(v) if isinstance(v, set) else v for k, v in config.to_dict().items()}


def lora_from_dict(fields: dict[str, Any] | None) -> LoraConfig | None:
    """The LoRA config `lora_to_dict` wrote."""
    if fields is None:
        return None
    try:
        return LoraConfig(**fields)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"the checkpoint's LoRA config does not load: {exc}") from exc


def _json(value: Any, what: str) -> Any:
    """`value` if it survives JSON unchanged in kind (checked by a round trip), else FailedPrecondition."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as exc:
        raise FailedPrecondition(f"{what} cannot be checkpointed as JSON: {exc}") from exc


def trainable_named(model: SplitModel) -> list[tuple[str, torch.nn.Parameter]]:
    """The device's trainable parameters, in the order the optimizer holds them."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def _optimizer_state(optimizer: SplitOptimizer, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    saved = optimizer.state_dict()
    scalars = {}
    for index, entries in saved["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{index}/{name}"] = value.detach().to("cpu", copy=True)
            elif value is not None:
                scalars[f"{index}/{name}"] = _json(value, f"optimizer state {name!r}")
    base = type(optimizer).__bases__[1]  # Split<Name>(SplitOptimizer, <Name>)
    return {
        "class": base.__name__,
        "synced": list(optimizer._synced),
        "param_groups": json.loads(optimizer_groups_to_json(saved["param_groups"])),
        "scalars": scalars,
    }


def _device_tensors(model: SplitModel, trunk: RemoteTrunk) -> dict[str, torch.Tensor]:
    tensors = {f"param/{n}": p.detach().to("cpu", copy=True) for n, p in trainable_named(model)}
    tensors["rng/torch"] = torch.get_rng_state()
    if model.placement.device.type == "cuda":  # CUDA-only branch: the GPU's generator too
        tensors["rng/cuda"] = torch.cuda.get_rng_state(model.placement.device)
    for direction, encoder in trunk.encoders.items():
        generator, state = encoder.state()
        tensors[f"wiregen/{direction}"] = torch.frombuffer(bytearray(generator), dtype=torch.uint8)
        tensors.update({f"wire/{direction}/{k}": v for k, v in state.items()})
    return tensors


def checkpoint_files(
    model: SplitModel,
    trunk: RemoteTrunk,
    optimizer: SplitOptimizer | None,
    *,
    scheduler: Scheduler | None = None,
    cursor: Any = None,
) -> tuple[int, dict[str, bytes]]:
    """(step, files) of a checkpoint of `model` now: the edge's state first (a dead edge fails here,
    before anything is written), then the device's."""
    opened = model.opened_with
    if opened is None or opened.selection:
        raise FailedPrecondition(
            "checkpoints cover LoRA split models opened with from_pretrained; a selection method's "
            "selected entries and scorer state are not exportable"
        )
    if opened.shared_trunk_adapter:
        raise FailedPrecondition(
            "a session on a shared trunk adapter cannot be checkpointed: the adapter is the job's, "
            "stepped by other sessions too, so restoring it would undo their steps"
        )
    if optimizer is None:
        raise FailedPrecondition("call configure_optimizer before checkpointing: its state is part of one")
    state, trunk_tensors = trunk.export_state()
    tensors = _device_tensors(model, trunk)
    meta = {
        "format": FORMAT,
        "step": optimizer.steps_taken,
        "cursor": _json(cursor, "the data cursor"),
        "training": model.training,
        "open": _json(
            {**dataclasses.asdict(opened), "lora_config": lora_to_dict(opened.lora_config)},
            "from_pretrained's arguments (config_overrides, lora_config)",
        ),
        "parameters": [[n, list(p.shape)] for n, p in trainable_named(model)],
        "optimizer": _optimizer_state(optimizer, tensors),
        "scheduler": None if scheduler is None else _json(scheduler.state_dict(), "the LR scheduler's state"),
        "forwards": trunk.forwards,
    }
    files = {
        META: json.dumps(meta, indent=1, sort_keys=True).encode(),
        DEVICE: save(tensors),
        TRUNK_STATE: state.SerializeToString(),
        TRUNK_TENSORS: save({k: v.contiguous() for k, v in trunk_tensors.items()}),
    }
    return optimizer.steps_taken, files


def write_model_checkpoint(
    model: SplitModel,
    trunk: RemoteTrunk,
    optimizer: SplitOptimizer | None,
    path: str | Path,
    *,
    scheduler: Scheduler | None = None,
    cursor: Any = None,
    keep: int = 1,
) -> Path:
    """`SplitModel.checkpoint`: a new checkpoint under `path`, the newest `keep` kept."""
    step, files = checkpoint_files(model, trunk, optimizer, scheduler=scheduler, cursor=cursor)
    directory = write_checkpoint(path, step, files, keep=keep)
    logger.info("checkpoint of step %d: %s (%d bytes)", step, directory, sum(map(len, files.values())))
    return directory


@dataclass
class Checkpointer:
    """`SplitModel.checkpoint_every`: a checkpoint before the first forward after every `every`-th
    optimizer step (step 0 included), when the step, its scheduler step and `zero_grad` are done."""

    root: Path
    every: int
    scheduler: Scheduler | None = None
    cursor: Callable[[], Any] | None = None
    keep: int = 1
    last_step: int | None = None
    last_directory: Path | None = None
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 1:
            raise InvalidArgument(f"checkpoint_every must be a positive number of steps, got {self.every!r}")
        if self.keep < 1:
            raise InvalidArgument(f"keep must be at least 1 (the last good checkpoint), got {self.keep}")

    def before_forward(self, model: SplitModel, trunk: RemoteTrunk, optimizer: SplitOptimizer | None) -> None:
        """Write a checkpoint if one is due (micro-batch threads: only the first does)."""
        if optimizer is None:
            return
        with self._lock:
            step = optimizer.steps_taken
            if step % self.every or step == self.last_step:
                return
            cursor = self.cursor() if self.cursor is not None else None
            self.last_directory = write_model_checkpoint(
                model, trunk, optimizer, self.root, scheduler=self.scheduler, cursor=cursor, keep=self.keep
            )
            self.last_step = step


@dataclass(frozen=True)
class ResumeInfo:
    """What `SplitModel.from_checkpoint` restored: where the caller's training continues."""

    directory: Path  # the checkpoint it resumed from
    step: int  # optimizer steps taken before it (the SDK's own data cursor: batches consumed)
    cursor: Any  # the caller's data cursor, as given to checkpoint()
    scheduler_state: dict[str, Any] | None

    def restore_scheduler(self, scheduler: Scheduler) -> None:
        """Load the checkpointed LR scheduler state into `scheduler` (built on `model.optimizer`
        after resuming, as it was built before): its step count and the optimizer's current LR."""
        if self.scheduler_state is None:
            raise FailedPrecondition("this checkpoint was written without a scheduler")
        scheduler.load_state_dict(dict(self.scheduler_state))
        # Building a scheduler sets each group's LR for step 0; the checkpointed LR is its last one.
        for group, lr in zip(scheduler.optimizer.param_groups, scheduler.get_last_lr(), strict=True):
            group["lr"] = lr
