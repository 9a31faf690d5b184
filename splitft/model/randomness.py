"""Per-session randomness without a process-wide lock: dropout masks and weight initialisation drawn
from a session's own `torch.Generator`, in whatever thread the session runs.

Hugging Face blocks and peft draw from torch's global RNG (`F.dropout`, dropout inside
`scaled_dot_product_attention`, `nn.init.*` with no generator). An edge runs many sessions in
parallel threads, so a session's masks would depend on its neighbours' traffic. `SessionRandomness`
is a `TorchFunctionMode` (such modes are thread-local): while it is active in a thread, those calls
draw from the generators it was given, and no other thread is affected.

Rows may belong to different sessions (a cross-session batch): `RowStreams` maps row ranges to
generators, and every dropout draws each range's mask from that range's generator with the range's
own shape, so a session sees the same masks batched or alone. All dropouts in the supported
families act on batch-first tensors; anything else is refused, not silently mixed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

# Initialisers that take `generator=` and otherwise draw from the global RNG.
_SEEDABLE = frozenset(
    {
        nn.init.uniform_,
        nn.init.normal_,
        nn.init.trunc_normal_,
        nn.init.kaiming_uniform_,
        nn.init.kaiming_normal_,
        nn.init.xavier_uniform_,
        nn.init.xavier_normal_,
        nn.init.orthogonal_,
        nn.init.sparse_,
        torch.Tensor.uniform_,
        torch.Tensor.normal_,
        torch.Tensor.bernoulli_,
        torch.Tensor.random_,
        torch.Tensor.exponential_,
        torch.bernoulli,
        torch.rand,
        torch.randn,
        torch.randint,
        torch.randperm,
        torch.normal,
        torch.multinomial,
    }
)
# Draws that cannot take a generator: refused inside the mode, so no draw escapes to the global RNG.
_UNSEEDABLE = frozenset(
    {
        torch.rand_like,
        torch.randn_like,
        torch.randint_like,
        torch.dropout,
        F.alpha_dropout,
        F.dropout1d,
        F.dropout2d,
    }
)
_DROPOUTS = frozenset({F.dropout})


@dataclass(frozen=True)
class RowStream:
    """Rows [start, stop) of a batch draw from `generator`."""

    start: int
    stop: int
    generator: torch.Generator


class RowStreams:
    """Which generator each row range of the current batch draws from (one range: one session)."""

    def __init__(self, streams: list[RowStream]) -> None:
        if not streams:
            raise ValueError("RowStreams needs at least one range")
        self.streams = streams
        self.rows = streams[-1].stop

    @classmethod
    def single(cls, generator: torch.Generator, rows: int = -1) -> RowStreams:
        """Every row draws from `generator` (rows=-1: whatever the batch size)."""
        return cls([RowStream(0, rows, generator)])

    def bernoulli_mask(self, like: torch.Tensor, keep: float) -> torch.Tensor:
        """A 0/1 mask shaped like `like`, each row range drawn from its own generator."""
        if len(self.streams) == 1 and self.streams[0].stop == -1:
            return _mask(like.shape, like, keep, self.streams[0].generator)
        if like.dim() == 0 or like.shape[0] != self.rows:
            raise RuntimeError(
                f"dropout on a tensor of shape {list(like.shape)} in a batch of {self.rows} rows: "
                "per-session masks need batch-first tensors"
            )
        return torch.cat(
            [_mask((s.stop - s.start, *like.shape[1:]), like, keep, s.generator) for s in self.streams]
        )

    def init_generator(self) -> torch.Generator:
        """The generator weight initialisation draws from (only meaningful with one range)."""
        if len(self.streams) != 1:
            raise RuntimeError("weight initialisation inside a multi-session batch")
        return self.streams[0].generator


def _mask(
    shape: tuple[int, ...] | torch.Size, like: torch.Tensor, keep: float, generator: torch.Generator
) -> torch.Tensor:
    """A 0/1 mask drawn on the generator's device (sessions draw on the CPU: the same masks whatever
    device the trunk runs on), then moved to `like`'s."""
    mask = torch.empty(shape, dtype=like.dtype, device=generator.device).bernoulli_(keep, generator=generator)
    return mask.to(like.device)


class SessionRandomness(TorchFunctionMode):
    """Route dropout and random initialisation in this thread to per-session generators.

    Use `with SessionRandomness(streams):`; `only(generator)` narrows it to one session for a part
    of the computation that sees only that session's rows (its LoRA path in a shared batch).
    """

    def __init__(self, streams: RowStreams) -> None:
        super().__init__()
        self._stack = [streams]

    @contextmanager
    def only(self, generator: torch.Generator) -> Iterator[None]:
        """Within the block, every draw comes from `generator` whatever the tensor's batch size."""
        self._stack.append(RowStreams.single(generator))
        try:
            yield
        finally:
            self._stack.pop()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        streams = self._stack[-1]
        if func in _DROPOUTS:
            return dropout_from(streams, *args, **kwargs)
        if func is F.scaled_dot_product_attention and _sdpa_dropout(args, kwargs) > 0:
            return _attention_with_dropout(streams, *args, **kwargs)
        if func in _SEEDABLE and kwargs.get("generator") is None:
            kwargs["generator"] = streams.init_generator()
        elif func in _UNSEEDABLE:
            raise RuntimeError(f"{getattr(func, '__name__', func)} cannot draw from a session generator")
        return func(*args, **kwargs)


def dropout_from(
    streams: RowStreams, input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False
) -> torch.Tensor:
    """`F.dropout` with its mask drawn from `streams` (`inplace` is ignored: the result is new)."""
    if not training or p == 0.0:
        return input
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    if p == 1.0:
        return input * 0.0
    keep = 1.0 - p
    return input * streams.bernoulli_mask(input, keep) / keep


def _sdpa_dropout(args: tuple, kwargs: dict[str, Any]) -> float:
    return float(kwargs.get("dropout_p", args[4] if len(args) > 4 else 0.0))


def _attention_with_dropout(
    streams: RowStreams,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """Scaled dot-product attention written out, so its dropout draws from the session streams
    (the fused kernel draws from the global RNG)."""
    rows, cols = query.size(-2), key.size(-2)
    scale = 1.0 / math.sqrt(query.size(-1)) if scale is None else scale
    if enable_gqa:
        repeat = query.size(-3) // key.size(-3)
        key = key.repeat_interleave(repeat, -3)
        value = value.repeat_interleave(repeat, -3)
    scores = query @ key.transpose(-2, -1) * scale
    if is_causal:
        causal = torch.ones(rows, cols, dtype=torch.bool, device=query.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask
    weights = dropout_from(streams, torch.softmax(scores, dim=-1), dropout_p, True)
    return weights @ value


def has_dropout(root: nn.Module) -> bool:
    """Whether `root` draws dropout in training: a dropout module with p > 0, or an attention
    layer whose `attention_dropout` rate (passed to the attention function, not a module) is > 0."""
    for module in root.modules():
        if isinstance(module, nn.Dropout) and module.p > 0:
            return True
        rate = getattr(module, "attention_dropout", 0.0)
        if isinstance(rate, float) and rate > 0:
            return True
    return False


def seeded(seed: int) -> torch.Generator:
    """A CPU generator seeded with `seed`."""
    return torch.Generator().manual_seed(seed)
