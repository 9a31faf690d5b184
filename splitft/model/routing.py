"""Per-session dropout routed only where the model draws: `SessionRandomness` at a fraction of its cost.

`SessionRandomness` is a `TorchFunctionMode`: while it is active, every torch call of the thread
(each matmul, view, add and norm) passes through its Python `__torch_function__`, holding the GIL.
Over a whole forward of `bench edge`'s BERT trunk that is 432 calls, for the 18 that draw random
numbers. `route_randomness` prepares a tree so that `RoutedRandomness` routes only those draws:

- dropout modules become `SessionDropout`s, which draw from the active `RoutedRandomness`'s
  streams directly (no mode, no hooks);
- attention modules with an attention dropout rate (passed to the attention function, where
  `F.dropout` or `scaled_dot_product_attention(dropout_p=)` draws) get forward hooks that have the
  mode active inside them, except while they run one of their child modules (the query, key, value
  and output projections, with their LoRA paths). The mode then sees 102 calls of that forward.

Forward hooks are registered with `always_call`, so an exception unwinds the mode too. The masks
are the very ones the whole-forward mode draws, from the same streams in the same order, because
those modules make every draw of a training forward in the supported families
(tests/unit/core/test_routing.py checks that each family, with sdpa and eager attention, draws
nothing from the global RNG and matches the whole-forward mode bit for bit).

With no `RoutedRandomness` active in a thread, a routed tree draws exactly as before. Route a tree
after building it and before its forwards (the edge routes each session tree and pooled batched
tree once); `RoutedRandomness(streams, root)` routes a root it has not seen routed, a deep copy
included.
"""

from __future__ import annotations

import threading
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import _pop_torch_function_stack, _push_on_torch_function_stack

from splitft.model.randomness import RowStreams, SessionRandomness, dropout_from


class _Local(threading.local):
    scope: RoutedRandomness | None = None  # the thread's active RoutedRandomness


_LOCAL = _Local()
_MARK = "_splitft_routed"  # on a routed root: its id (a deep copy keeps the id of its source)


class RoutedRandomness:
    """Within the block, routed modules of this thread draw from `streams` (see the module doc).

    `with RoutedRandomness(streams, root):` around a forward of `root` routes `root` first unless
    `route_randomness` already did (build a tree, then route it, then run it)."""

    def __init__(self, streams: RowStreams, root: nn.Module | None = None) -> None:
        self.streams = streams
        self.mode = SessionRandomness(streams)
        self._root = root
        self.draws: list[bool] = []  # per routed attention module or child entered: is the mode on?
        self._outer: RoutedRandomness | None = None

    @classmethod
    def single(cls, generator: torch.Generator, root: nn.Module | None = None) -> RoutedRandomness:
        """Every row draws from `generator` (one session's forward)."""
        return cls(RowStreams.single(generator), root)

    def __enter__(self) -> RoutedRandomness:
        if self._root is not None and self._root.__dict__.get(_MARK) != id(self._root):
            route_randomness(self._root)
        self._outer = _LOCAL.scope
        _LOCAL.scope = self
        return self

    def __exit__(self, *exc: object) -> None:
        if self.draws and self.draws[-1]:  # only if a hook was skipped; the forward hooks always run
            _pop_torch_function_stack()
        self.draws.clear()
        _LOCAL.scope = self._outer
        self._outer = None


class SessionDropout(nn.Dropout):
    """`nn.Dropout` whose mask comes from the thread's `RoutedRandomness` when one is active (no mode,
    no hooks: the cheapest route), and from wherever `F.dropout` draws otherwise."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        scope = _LOCAL.scope
        if scope is None or not self.training or self.p == 0:
            return F.dropout(input, self.p, self.training, self.inplace)
        return dropout_from(scope.streams, input, self.p)


def session_dropout(dropout: nn.Module, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """`dropout(x)` with its mask drawn from `generator` when it is an active `nn.Dropout` (a
    shared pass applies each session's LoRA dropout to its own rows this way, with no mode)."""
    if isinstance(dropout, nn.Dropout) and dropout.training and dropout.p > 0:
        return dropout_from(RowStreams.single(generator), x, dropout.p)
    return dropout(x)


def draws_in_attention(module: nn.Module) -> bool:
    """Whether `module` is an attention module that passes a dropout rate > 0 to its attention
    function (Llama, Mistral, Qwen2 and ViT keep it as `attention_dropout`; BERT and GPT-2 pass the
    p of their own dropout child; all mark their attention modules with `is_causal`)."""
    if not hasattr(module, "is_causal"):
        return False
    rate = getattr(module, "attention_dropout", 0.0)
    if isinstance(rate, float) and rate > 0:
        return True
    return any(isinstance(child, nn.Dropout) and child.p > 0 for child in module.children())


def route_randomness(root: nn.Module) -> int:
    """Route every draw of `root`'s training forward (idempotent): its dropout modules become
    `SessionDropout`s, its attention modules with dropout get the mode hooks, and their other
    children hooks that leave the mode around them. Returns how many modules draw."""
    drawing = 0
    for parent in list(root.modules()):
        for name, child in list(parent._modules.items()):
            if type(child) is nn.Dropout and child.p > 0:
                replacement = SessionDropout(child.p, child.inplace)
                replacement.train(child.training)
                parent._modules[name] = replacement
        if isinstance(parent, SessionDropout) and parent.p > 0:
            drawing += 1
        elif draws_in_attention(parent):
            drawing += 1
            _hook(parent, _enter_drawing, _leave_drawing)
            for child in parent.children():
                if not isinstance(child, nn.Dropout):
                    _hook(child, _enter_quiet, _leave_quiet)
    root.__dict__[_MARK] = id(root)
    return drawing


def _hook(module: nn.Module, enter: Any, leave: Any) -> None:
    hooks = module._forward_pre_hooks.values()
    if _enter_drawing in hooks or _enter_quiet in hooks:
        return
    module.register_forward_pre_hook(enter)
    module.register_forward_hook(leave, always_call=True)


# The hooks push and pop the mode on torch's function-mode stack directly (what the mode's
# `__enter__` and `__exit__` do): they run around every attention call and its projections, so each
# Python frame saved is saved per module call.
def _enter_drawing(module: nn.Module, args: Any) -> None:
    scope = _LOCAL.scope
    if scope is not None:
        if not (scope.draws and scope.draws[-1]):
            _push_on_torch_function_stack(scope.mode)
        scope.draws.append(True)


def _leave_drawing(module: nn.Module, args: Any, output: Any) -> None:
    scope = _LOCAL.scope
    if scope is not None:
        scope.draws.pop()
        if not (scope.draws and scope.draws[-1]):
            _pop_torch_function_stack()


def _enter_quiet(module: nn.Module, args: Any) -> None:
    scope = _LOCAL.scope
    if scope is not None:
        if scope.draws and scope.draws[-1]:
            _pop_torch_function_stack()
        scope.draws.append(False)


def _leave_quiet(module: nn.Module, args: Any, output: Any) -> None:
    scope = _LOCAL.scope
    if scope is not None:
        scope.draws.pop()
        if scope.draws and scope.draws[-1]:
            _push_on_torch_function_stack(scope.mode)
