"""The edge's memory estimator: a served model's memory profile, measured once when it loads, and
the default memory limit. The formulas that turn a profile into a session's bytes are torch-free
(`splitft.memory.estimate`), shared with the control plane; the accounting is
`edge_server.admission`.

The profile is measured, not derived from the architecture: a tiny training forward of the trunk
(batch 1, a padded attention mask like a device's, input requiring grad, dropout as configured) runs
under `torch.autograd.graph.saved_tensors_hooks`, and the bytes of every distinct storage autograd
keeps (parameters excepted: the shared trunk holds them), plus the forward's input and output, are
summed. Two lengths separate a per-token from a per-token-squared term (attention probabilities
under dropout); one block and all blocks separate each block's share from the forward's own (masks,
rotary tables, input, output). Forward pre-hooks on one block's linear layers record which inputs
they share and which the frozen graph keeps anyway, which is what a LoRA on them adds.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch
from torch import nn

from edge_server.admission import MemoryAccountant
from edge_server.batched_trunk import share_modules
from edge_server.registry import ModelRegistry
from splitft.memory.estimate import BlockLinear, MemoryProfile, default_session
from splitft.memory.host import host_available
from splitft.methods.common import is_linear_like, linear_shape
from splitft.model.loading import LoadedSpan
from splitft.model.quantize import is_quantized, storage_pointers
from splitft.model.randomness import RowStreams, SessionRandomness, has_dropout, seeded
from splitft.model.spans import Skipped

logger = logging.getLogger(__name__)

MEASURE_TOKENS = (16, 32)  # the two lengths the profile is fitted at
DEFAULT_MEMORY_SHARE = 0.5  # of the memory available when the edge starts (after loading its models)


@contextmanager
def kept_storages(params: set[int], kept: dict[int, int]) -> Iterator[None]:
    """Record every storage autograd saves in the block (ptr -> bytes), parameters excepted."""

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if is_quantized(tensor):  # a frozen quantized weight (a tensor subclass without one storage)
            return tensor
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            kept[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        yield


def _trunk_view(span: LoadedSpan, start: int, stop: int) -> nn.Module:
    """The served trunk with only blocks [start, stop) present (a session's view of it)."""
    root = share_modules(span.root)
    blocks = span.family.blocks(root)
    for i in range(len(blocks)):
        if not start <= i < stop:
            blocks[i] = Skipped(f"block {i}")
    return root


def _measure(
    span: LoadedSpan, stop: int, tokens: int, linears: dict[str, tuple[int, int]] | None = None
) -> int:
    """Bytes a training forward of one row of `tokens` through blocks [1, stop) keeps; with
    `linears`, also fills it with block 1's linear layers' (input storage, whether it is kept)."""
    root = _trunk_view(span, 1, stop).train()
    params = {ptr for p in span.root.parameters() for ptr in storage_pointers(p)}
    kept: dict[int, int] = {}
    inputs: dict[str, torch.Tensor] = {}  # held, so no later tensor reuses an input's address
    hooks = []
    if linears is not None:
        block = span.family.blocks(root)[1]
        for name, module in block.named_modules():
            if is_linear_like(module):
                hooks.append(module.register_forward_pre_hook(_record_input(inputs, name)))
    hidden = torch.randn(1, tokens, span.config.hidden_size, dtype=span.dtype, device=span.device)
    hidden.requires_grad_(True)
    mask = torch.ones(1, tokens, dtype=torch.long, device=span.device)
    mask[0, -1] = 0  # a padded row, as devices send: the family builds a real attention mask
    try:
        # Dropout as sessions draw it (their own generators; the attention then runs unfused).
        randomness = SessionRandomness(RowStreams.single(seeded(0))) if has_dropout(root) else nullcontext()
        with randomness, torch.enable_grad(), kept_storages(params, kept):
            out = span.family.run_trunk(root, hidden, mask, None, 1, stop)
    finally:
        for hook in hooks:
            hook.remove()
    if linears is not None:  # before the input joins `kept`: later blocks' inputs are not kept
        for name, tensor in inputs.items():
            ptr = tensor.untyped_storage().data_ptr()
            linears[name] = (ptr, int(ptr in kept))
    for tensor in (hidden, out):  # the session keeps both in its pending forward
        kept[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
    return sum(kept.values())


def _record_input(inputs: dict[str, torch.Tensor], name: str):
    def hook(_module: nn.Module, args: tuple) -> None:
        inputs[name] = args[0]

    return hook


def _fit(short: float, long: float) -> tuple[float, float]:
    """Per-token and per-token-squared bytes through f(T1) = short and f(T2) = long (both >= 0)."""
    t1, t2 = MEASURE_TOKENS
    square = (long / t2 - short / t1) / (t2 - t1)
    linear = short / t1 - square * t1
    if square < 0:
        return max(short / t1, long / t2), 0.0
    if linear < 0:
        return 0.0, max(short / t1**2, long / t2**2)
    return linear, square


def _block_linears(span: LoadedSpan, found: dict[str, tuple[int, int]]) -> list[BlockLinear]:
    block = span.family.blocks(span.root)[1]
    groups: dict[int, int] = {}
    rows = []
    for name, module in block.named_modules():
        if name not in found:
            continue
        ptr, saved = found[name]
        out_features, in_features = linear_shape(module)
        group = groups.setdefault(ptr, len(groups))
        rows.append(
            BlockLinear(
                name=name,
                in_features=in_features,
                out_features=out_features,
                input_group=group,
                input_saved=bool(saved),
            )
        )
    return rows


def measure_profile(span: LoadedSpan) -> MemoryProfile:
    """The memory profile of a served trunk (blocks 1..L loaded): four tiny training forwards."""
    last = span.num_layers  # blocks [1, last) are the served trunk
    found: dict[str, tuple[int, int]] = {}
    one = [_measure(span, 2, t, found if t == MEASURE_TOKENS[0] else None) for t in MEASURE_TOKENS]
    if last - 1 > 1:
        every = [_measure(span, last, t) for t in MEASURE_TOKENS]
        per_block = [(a - b) / (last - 2) for a, b in zip(every, one, strict=True)]
        outside = [b - p for b, p in zip(one, per_block, strict=True)]
    else:
        per_block, outside = [float(x) for x in one], [0.0, 0.0]
    block_token, block_token2 = _fit(*per_block)
    forward_token, forward_token2 = _fit(*[max(0.0, x) for x in outside])
    return MemoryProfile(
        num_layers=span.num_layers,
        dtype_bytes=span.dtype.itemsize,  # activations' (weights may be quantized)
        forward_token=forward_token,
        forward_token2=forward_token2,
        block_token=block_token,
        block_token2=block_token2,
        linears=_block_linears(span, found),
    )


def available_memory(device: torch.device) -> tuple[int, str]:
    """Bytes free for sessions on `device` now, and where the number comes from."""
    if device.type == "cuda":  # CUDA-only branch: the GPU's free memory, not the host's
        free, _total = torch.cuda.mem_get_info(device)
        return int(free), f"free memory of {device}"
    return host_available()


def default_memory_limit(device: torch.device) -> int:
    """`DEFAULT_MEMORY_SHARE` of the memory available on the trunk's device (logged with its source)."""
    available, source = available_memory(device)
    limit = max(1, int(available * DEFAULT_MEMORY_SHARE))
    logger.info(
        "session memory limit %d bytes: %.0f%% of the %s (--memory-limit sets it)",
        limit,
        100 * DEFAULT_MEMORY_SHARE,
        source,
    )
    return limit


def build_accountant(registry: ModelRegistry, limit: int | None) -> MemoryAccountant:
    """The edge's accountant: every served model's profile, measured now, and the limit (None: the
    default share of the memory available on the trunk's device)."""
    profiles = {name: measure_profile(served.span) for name, served in sorted(registry.models.items())}
    for name, profile in profiles.items():
        logger.info("%s: a default session takes %d bytes", name, default_session(profile).total)
    if limit is None:
        first = next(iter(registry.models.values()))
        limit = default_memory_limit(first.span.device)
    return MemoryAccountant(limit, profiles)
