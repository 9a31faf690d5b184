"""Per-session dropout routed only where the model draws: `SessionRandomness` at a fraction of its cost.

`SessionRandomness` is a `TorchFunctionMode`: while it is active, every torch call of the thread
(each matmul, view, add and norm) passes through its Python `__torch_function__`, holding the GIL.
Over a whole forward of the bench BERT trunk that is 432 calls, for the 18 that draw random numbers.
`RoutedRandomness` has the same mode active only while the model is inside a module that draws:

- a dropout module with p > 0;
- an attention module with an attention dropout rate (passed to the attention function, where
  `F.dropout` or `scaled_dot_product_attention(dropout_p=)` draws), except while it runs one of its
  own child modules that does not draw (its query, key, value and output projections).

Forward pre-hooks say "draws" or "does not draw" and forward hooks (`always_call`, so an exception
unwinds them too) undo it; the mode is entered or left only where that changes. The masks are the
very ones the whole-forward mode draws, from the same streams in the same order, because those
modules make every draw of a training forward in the supported families
(tests/unit/core/test_routing.py checks that each family draws nothing from the global RNG and
matches the whole-forward mode bit for bit).

The hooks do nothing in a thread with no `RoutedRandomness` active, so a routed tree behaves as
before everywhere else.
"""

from __future__ import annotations

import threading
from typing import Any

import torch
from torch import nn

from splitft.model.randomness import RowStreams, SessionRandomness, dropout_from

_LOCAL = threading.local()  # .scope: the thread's active RoutedRandomness, or None
_MARK = "_splitft_routed"  # on a routed root: its id (a deep copy keeps the id of its source)


class RoutedRandomness:
    """Within the block, routed modules of this thread draw from `streams` (see the module doc).

    `with RoutedRandomness(streams, root):` around a forward of `root` routes `root` first unless
    `route_randomness` already did (build a tree, then route it, then run it)."""

    def __init__(self, streams: RowStreams, root: nn.Module | None = None) -> None:
        self.mode = SessionRandomness(streams)
        self._root = root
        self._draws: list[bool] = []  # per routed module entered and not left: does it draw?
        self._entered = False
        self._outer: RoutedRandomness | None = None

    def __enter__(self) -> RoutedRandomness:
        if self._root is not None and self._root.__dict__.get(_MARK) != id(self._root):
            route_randomness(self._root)
        self._outer = getattr(_LOCAL, "scope", None)
        _LOCAL.scope = self
        return self

    def __exit__(self, *exc: object) -> None:
        if self._entered:  # only if a hook was skipped; the forward hooks always run
            self._draws.clear()
            self._sync(False)
        _LOCAL.scope = self._outer
        self._outer = None

    def push(self, draws: bool) -> None:
        self._draws.append(draws)
        self._sync(draws)

    def pop(self) -> None:
        self._draws.pop()
        self._sync(bool(self._draws) and self._draws[-1])

    def _sync(self, want: bool) -> None:
        if want and not self._entered:
            self.mode.__enter__()
        elif self._entered and not want:
            self.mode.__exit__(None, None, None)
        self._entered = want


def session_dropout(dropout: nn.Module, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """`dropout(x)` with its mask drawn from `generator` when it is an active `nn.Dropout` (a
    shared pass applies each session's LoRA dropout to its own rows this way, with no mode)."""
    if isinstance(dropout, nn.Dropout) and dropout.training and dropout.p > 0:
        return dropout_from(RowStreams.single(generator), x, dropout.p)
    return dropout(x)


def draws_randomly(module: nn.Module) -> bool:
    """Whether a training forward of `module` itself draws random numbers: a dropout module with
    p > 0, or an attention module with an attention dropout rate (Llama, Mistral, Qwen2 and ViT
    keep it as `attention_dropout`; BERT and GPT-2 pass the p of their own dropout child; all mark
    their attention modules with `is_causal`)."""
    if isinstance(module, nn.Dropout):
        return module.p > 0
    if not hasattr(module, "is_causal"):
        return False
    rate = getattr(module, "attention_dropout", 0.0)
    if isinstance(rate, float) and rate > 0:
        return True
    return any(isinstance(child, nn.Dropout) and child.p > 0 for child in module.children())


def route_randomness(root: nn.Module) -> int:
    """Hook the modules of `root` that draw, and the other children of those that draw around
    them (idempotent: a module hooked before is left as it is). Returns how many modules draw."""
    drawing = [module for module in root.modules() if draws_randomly(module)]
    for module in drawing:
        _hook(module, _enter_drawing)
        for child in module.children():
            if not draws_randomly(child):
                _hook(child, _enter_quiet)
    root.__dict__[_MARK] = id(root)
    return len(drawing)


def _hook(module: nn.Module, enter: Any) -> None:
    hooks = module._forward_pre_hooks.values()
    if _enter_drawing in hooks or _enter_quiet in hooks:
        return
    module.register_forward_pre_hook(enter)
    module.register_forward_hook(_leave, always_call=True)


def _enter_drawing(module: nn.Module, args: Any) -> None:
    scope: RoutedRandomness | None = getattr(_LOCAL, "scope", None)
    if scope is not None:
        scope.push(True)


def _enter_quiet(module: nn.Module, args: Any) -> None:
    scope: RoutedRandomness | None = getattr(_LOCAL, "scope", None)
    if scope is not None:
        scope.push(False)


def _leave(module: nn.Module, args: Any, output: Any) -> None:
    scope: RoutedRandomness | None = getattr(_LOCAL, "scope", None)
    if scope is not None:
        scope.pop()
