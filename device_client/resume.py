"""Resume a split model from a checkpoint (`device_client.checkpoint`) on the same edge or another.

`resume` opens a new session with the arguments the checkpointed one was opened with (its seed
included), then restores, in this order: the device's trainable parameters, its optimizer (built
as before, then its state loaded), the edge's half (`ImportSessionState`: trunk adapter, its
optimizer, step count, dropout generator, the edge's encoders), the device's encoders, train or
eval mode, and last torch's RNG, so that nothing built meanwhile draws from the restored stream.
Anything refused closes the new session again and raises.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from google.protobuf.message import DecodeError
from safetensors import SafetensorError
from safetensors.torch import load

from device_client.checkpoint import (
    DEVICE,
    FORMAT,
    META,
    TRUNK_STATE,
    TRUNK_TENSORS,
    ResumeInfo,
    lora_from_dict,
    trainable_named,
)
from device_client.checkpoint_files import CorruptCheckpoint, latest_checkpoint
from device_client.connection import EdgeConnection
from device_client.optim import SplitOptimizer
from device_client.retry import RetryPolicy
from device_client.trunk import RemoteTrunk
from splitft.errors import FailedPrecondition, InvalidArgument
from splitft.v1 import dataplane_pb2 as pb

if TYPE_CHECKING:
    from device_client.model import SplitModel


def _read(files: dict[str, bytes], directory: Path) -> tuple[dict, dict, pb.SessionState, dict]:
    """(meta, device tensors, edge state, edge tensors) of a verified checkpoint."""
    try:
        meta = json.loads(files[META])
        device, trunk = load(files[DEVICE]), load(files[TRUNK_TENSORS])
        state = pb.SessionState.FromString(files[TRUNK_STATE])
    except (KeyError, ValueError, SafetensorError, DecodeError) as exc:
        raise CorruptCheckpoint(f"checkpoint {directory}: {type(exc).__name__}: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CorruptCheckpoint(f"checkpoint {directory}: meta.json format is not {FORMAT}")
    return meta, device, state, trunk


def resume(
    cls: type[SplitModel],
    path: str | Path,
    *,
    edge: EdgeConnection,
    model_dir: str | Path | None = None,
    model_name: str | None = None,
    optimizer_cls: type[torch.optim.Optimizer] | None = None,
    restore_rng: bool = True,
    retry: RetryPolicy | None = None,
    adapter: str | Path | None = None,
) -> SplitModel:
    """`SplitModel.from_checkpoint` (see there). `adapter`: start from these weights (a whole-model
    adapter directory, as `load_adapter` takes) instead of the checkpoint's, keeping every other part
    of its state: both sides' optimizer state, step counts, scheduler, encoders and generators. A
    federated device uses it to continue its own optimizer from the round's global adapter."""
    directory, files = latest_checkpoint(path)
    meta, device, state, trunk_tensors = _read(files, directory)
    opened = dict(meta["open"])
    lora, batch_shape = lora_from_dict(opened.pop("lora_config")), opened.pop("batch_shape")
    opened.pop("selection")
    opened["model_dir"] = str(model_dir) if model_dir is not None else opened["model_dir"]
    opened["model"] = model_name or opened["model"]
    model = cls.from_pretrained(
        opened.pop("model_dir"),
        edge=edge,
        lora_config=lora,
        batch_shape=tuple(batch_shape) if batch_shape else None,
        retry=retry,
        **opened,
    )
    try:
        trunk = model._trunk
        _check_parameters(model, meta)
        if adapter is None:
            _restore_parameters(model, device)
        else:  # the new weights, both sides; the edge's part then travels in the imported state
            model.load_adapter(adapter)
            trunk_tensors.update({f"adapter/{k}": v for k, v in trunk.export_adapter().items()})
        optimizer = _restore_optimizer(model, meta, device, optimizer_cls)
        if not restore_rng:
            state.generators.clear()  # the fresh session's generators stay (to show they matter)
        trunk.import_state(state, trunk_tensors)
        _restore_encoders(trunk, device, restore_rng)
        model.train(bool(meta["training"]))
        trunk.forwards = int(meta.get("forwards", 0))
        if restore_rng:
            _restore_rng(model, device)
    except BaseException:
        model.close()
        raise
    optimizer.steps_taken = int(meta["step"])
    model.resumed = ResumeInfo(directory, int(meta["step"]), meta.get("cursor"), meta.get("scheduler"))
    return model


def _check_parameters(model: SplitModel, meta: dict) -> None:
    mine = [[n, list(p.shape)] for n, p in trainable_named(model)]
    if mine != meta["parameters"]:
        raise FailedPrecondition(
            "the checkpoint's device parameters are not this model's (another model or LoRA config?): "
            f"{len(meta['parameters'])} saved, {len(mine)} here"
        )


def _restore_parameters(model: SplitModel, device: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, param in trainable_named(model):
            param.copy_(device[f"param/{name}"].to(param.device, param.dtype))


def _restore_optimizer(
    model: SplitModel, meta: dict, device: dict[str, torch.Tensor], optimizer_cls: type | None
) -> SplitOptimizer:
    saved = meta["optimizer"]
    cls = optimizer_cls or getattr(torch.optim, saved["class"], None)
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise InvalidArgument(
            f"the checkpoint's optimizer {saved['class']!r} is not in torch.optim: pass optimizer_cls="
        )
    groups = [
        {k: tuple(v) if isinstance(v, list) else v for k, v in g.items()} for g in saved["param_groups"]
    ]
    if len(groups) != 1:
        raise CorruptCheckpoint(f"the device optimizer has one param group, the checkpoint {len(groups)}")
    optimizer = model.configure_optimizer(cls, **{k: groups[0][k] for k in saved["synced"] if k in groups[0]})
    params = len(trainable_named(model))
    state: dict[int, dict[str, Any]] = {}
    for name, tensor in device.items():
        if name.startswith("optim/"):
            _, index, key = name.split("/", 2)
            state.setdefault(int(index), {})[key] = tensor
    for name, value in saved.get("scalars", {}).items():
        index, key = name.split("/", 1)
        state.setdefault(int(index), {})[key] = value
    try:
        optimizer.load_state_dict(
            {"state": state, "param_groups": [{**groups[0], "params": list(range(params))}]}
        )
    except (ValueError, KeyError, RuntimeError) as exc:
        raise FailedPrecondition(f"the checkpoint's optimizer state does not fit this model: {exc}") from exc
    return optimizer


def _restore_encoders(trunk: RemoteTrunk, device: dict[str, torch.Tensor], restore_rng: bool) -> None:
    for direction, encoder in trunk.encoders.items():
        prefix = f"wire/{direction}/"
        tensors = {k[len(prefix) :]: v for k, v in device.items() if k.startswith(prefix)}
        saved = device.get(f"wiregen/{direction}")
        fresh = not restore_rng or saved is None
        generator = encoder.state()[0] if saved is None or fresh else bytes(saved.numpy().tobytes())
        encoder.load_state(generator, tensors)


def _restore_rng(model: SplitModel, device: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(device["rng/torch"])
    if "rng/cuda" in device:
        if model.placement.device.type != "cuda":
            raise FailedPrecondition("the checkpoint was taken on CUDA; resume it with device='cuda'")
        torch.cuda.set_rng_state(device["rng/cuda"], model.placement.device)  # CUDA-only line
