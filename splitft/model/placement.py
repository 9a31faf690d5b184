"""Where a span computes and in what precision: `--device`, `--dtype` and accelerate's device maps.

A `Placement` is what an operator asks for (`device="auto"`, `dtype="bfloat16"`,
`device_map="balanced"`); `resolve()` checks it against this machine and answers with torch
objects, or refuses with a message naming what is available. Tensors cross the wire in the
codec's format whatever either side computes in; each side casts what arrives to its own device
and dtype (`splitft.wire` moves tensors to the CPU to encode them).

A trunk too big for one accelerator is spread over the visible GPUs by accelerate's
`infer_auto_device_map` (whole blocks per device) and run with `dispatch_model`'s hooks, which
move the activations from block to block. Offloading to the CPU or disk is refused: it would
stream weights on every forward of every session.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from splitft.errors import FailedPrecondition, InvalidArgument
from splitft.memory.host import host_available
from splitft.model.choices import DEVICE_CHOICES, DEVICE_MAPS, DTYPE_NAMES

logger = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in DTYPE_NAMES}


@dataclass(frozen=True)
class Placement:
    """Where and in what precision a span runs, as asked (strings, validated by `resolve`)."""

    device: str = "cpu"
    dtype: str = "float32"
    device_map: str | None = None  # "auto" | "balanced": spread the span's blocks over the GPUs
    max_memory: Mapping[str, int] | None = None  # per device ("0", "cuda:1", "cpu") for the map

    def resolve(self) -> ResolvedPlacement:
        """The torch device and dtype; InvalidArgument when this machine cannot do it."""
        device = resolve_device(self.device)
        dtype = resolve_dtype(self.dtype, device)
        if self.device_map is not None and self.device_map not in DEVICE_MAPS:
            raise InvalidArgument(
                f"--device-map must be one of {', '.join(DEVICE_MAPS)}, got {self.device_map!r}"
            )
        return ResolvedPlacement(device, dtype, self.device_map, dict(self.max_memory or {}))


@dataclass(frozen=True)
class ResolvedPlacement:
    """A placement this machine can run: the span's first device, its compute dtype, the map asked."""

    device: torch.device
    dtype: torch.dtype
    device_map: str | None = None
    max_memory: Mapping[str, int] | None = None

    @property
    def describe(self) -> str:
        """For logs and errors: 'cuda:0 bfloat16 (device map balanced)'."""
        text = f"{self.device} {str(self.dtype).removeprefix('torch.')}"
        return text + (f" (device map {self.device_map})" if self.device_map else "")


CPU_FLOAT32 = ResolvedPlacement(torch.device("cpu"), torch.float32)


def resolve_device(name: str) -> torch.device:
    """`auto` is CUDA when a GPU is visible, else the CPU; anything not present is refused."""
    name = name.strip().lower()
    if name == "auto":  # the GPU's side is `_cuda_device`, the CUDA-only branch
        return _cuda_device(torch.device("cuda")) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise InvalidArgument(f"--device must be one of {', '.join(DEVICE_CHOICES)}, got {name!r}") from exc
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type == "cuda":
        return _cuda_device(device)
    if device.type == "mps":
        if not torch.backends.mps.is_available():
            raise InvalidArgument(
                f"--device mps: no Apple GPU is available here; available: {available_devices()}"
            )
        return device
    raise InvalidArgument(f"--device must be one of {', '.join(DEVICE_CHOICES)}, got {name!r}")


def _cuda_device(device: torch.device) -> torch.device:  # CUDA-only branch
    if not torch.cuda.is_available():
        raise InvalidArgument(
            f"--device {device}: CUDA is not available here (torch {torch.__version__}, "
            f"{torch.cuda.device_count()} GPU(s) visible); available: {available_devices()}"
        )
    index = torch.cuda.current_device() if device.index is None else device.index
    if index >= torch.cuda.device_count():
        raise InvalidArgument(f"--device {device}: only {torch.cuda.device_count()} GPU(s) visible")
    return torch.device("cuda", index)


def available_devices() -> str:
    """The devices this machine offers, for messages: 'cpu, cuda:0, cuda:1'."""
    found = ["cpu"]
    if torch.cuda.is_available():  # CUDA-only branch: the visible GPUs
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        found.append("mps")
    return ", ".join(found)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The compute dtype, refused where a training step in it does not run on `device`."""
    dtype = DTYPES.get(name.strip().lower())
    if dtype is None:
        raise InvalidArgument(f"--dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    if dtype is not torch.float32:
        problem = _half_precision_problem(dtype, device)
        if problem:
            raise InvalidArgument(f"--dtype {name} is not supported on {device}: {problem}; use float32")
    return dtype


def _half_precision_problem(dtype: torch.dtype, device: torch.device) -> str:
    """What fails when a linear layer, a layer norm and their backward run in `dtype` here ("" if
    nothing): the operations every trunk block needs, probed rather than assumed per platform."""
    try:
        x = torch.randn(4, 8, device=device, dtype=dtype, requires_grad=True)
        w = torch.randn(8, 8, device=device, dtype=dtype)
        y = torch.nn.functional.layer_norm(torch.nn.functional.linear(x, w), (8,))
        torch.softmax(y, dim=-1).sum().backward()
    except (RuntimeError, NotImplementedError) as exc:
        return str(exc).splitlines()[0]
    return ""


def plan_device_map(root: nn.Module, block_class: str, placement: ResolvedPlacement) -> dict[str, int | str]:
    """Accelerate's device map for `root` (parameters on `meta`, already cut to this side): whole
    blocks per device, over the GPUs (or the CPU when the placement is the CPU). Refused when the
    weights do not fit without offloading to the CPU or disk."""
    from accelerate import infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    max_memory = _max_memory(placement)
    if placement.device_map == "balanced" and len(max_memory) > 1:
        max_memory = get_balanced_memory(
            root, max_memory=max_memory, no_split_module_classes=[block_class], dtype=placement.dtype
        )
    device_map = infer_auto_device_map(
        root, max_memory=max_memory, no_split_module_classes=[block_class], dtype=placement.dtype
    )
    allowed = set(max_memory)
    spilled = sorted({str(d) for d in device_map.values() if d not in allowed})
    if spilled:
        need = sum(p.numel() for p in root.parameters()) * placement.dtype.itemsize
        raise InvalidArgument(
            f"the span's weights ({need / 2**30:.2f} GiB in {str(placement.dtype).removeprefix('torch.')}) "
            f"do not fit the device map over {sorted(map(str, allowed))} (memory {_gib(max_memory)}): "
            f"accelerate would offload to {', '.join(spilled)}; use more GPUs, --dtype bfloat16 or --quantize"
        )
    logger.info("device map (%s): %s", placement.device_map, _summary(device_map))
    return dict(device_map)


def _max_memory(placement: ResolvedPlacement) -> dict[int | str, int]:
    """The memory the map may use per device: the operator's `max_memory`, else what is free."""
    if placement.max_memory:
        return {_device_key(k): int(v) for k, v in placement.max_memory.items()}
    if placement.device.type == "cuda":  # CUDA-only branch: every visible GPU's free memory
        return {i: torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count())}
    return {"cpu": host_available()[0]}


def _device_key(name: str) -> int | str:
    """'0' or 'cuda:0' -> 0 (accelerate's key for a GPU); 'cpu' stays 'cpu'."""
    text = str(name).strip().lower().removeprefix("cuda:")
    if text.isdigit():
        return int(text)
    if text in ("cpu", "mps"):
        return text
    raise InvalidArgument(f"max memory is per device (0, cuda:1, cpu), got {name!r}")


def _gib(memory: Mapping[int | str, int]) -> str:
    return ", ".join(f"{k}: {v / 2**30:.2f} GiB" for k, v in memory.items())


def _summary(device_map: Mapping[str, int | str]) -> str:
    counts: dict[str, int] = {}
    for where in device_map.values():
        counts[str(where)] = counts.get(str(where), 0) + 1
    return ", ".join(f"{n} module(s) on {where}" for where, n in counts.items())


def torch_device(where: int | str) -> torch.device:
    """A device-map value (0, 'cpu', 'cuda:1') as a torch device."""
    return torch.device("cuda", where) if isinstance(where, int) else torch.device(where)


# Which sides run CUDA backwards in this process, per GPU: (role, device) -> open spans. torch's
# autograd runs every CUDA backward of a process on one worker thread per GPU; the device's trunk
# call blocks that thread until the edge answers, so an edge whose backward queues behind it on the
# same GPU in the same process never answers. Refused instead of hanging.
_CUDA_AUTOGRAD: dict[tuple[str, str], int] = {}
_CUDA_AUTOGRAD_LOCK = threading.Lock()


def claim_cuda_autograd(role: str, device: torch.device | str) -> None:
    """Record that `role` ("edge" or "device") trains on `device` here; FailedPrecondition when the
    other side already does on that GPU in this process (nothing to record off CUDA)."""
    where = torch.device(device)
    if where.type != "cuda":
        return
    with _CUDA_AUTOGRAD_LOCK:
        other = next((r for (r, d), n in _CUDA_AUTOGRAD.items() if r != role and d == str(where) and n), None)
        if other is not None:
            raise FailedPrecondition(
                f"the {role} and the {other} both on {where} in one process would deadlock: torch runs every "
                "backward on a GPU of a process in one autograd thread, and the device's trunk call "
                "waits there for the edge's backward; run the edge in its own process "
                "(`splitft edge serve --device cuda`), or put one side on another device"
            )
        _CUDA_AUTOGRAD[(role, str(where))] = _CUDA_AUTOGRAD.get((role, str(where)), 0) + 1


def release_cuda_autograd(role: str, device: torch.device | str) -> None:
    """Undo one `claim_cuda_autograd(role, device)` (a closed session, a stopped edge)."""
    where = torch.device(device)
    if where.type != "cuda":
        return
    with _CUDA_AUTOGRAD_LOCK:
        key = (role, str(where))
        _CUDA_AUTOGRAD[key] = max(0, _CUDA_AUTOGRAD.get(key, 0) - 1)
