"""`SplitModel.generate`: Hugging Face's own `generate` loop on the device's model, the trunk's
blocks on the edge, with key/value caches on both sides.

The device's model is the Hugging Face class with the trunk blocks replaced (`TrunkEntry` and
placeholders), so `generate` (greedy, sampling, its logits processors and stopping criteria) runs
unchanged and keeps the device blocks' cache in its own `DynamicCache`. A hook on the model's
forward hands each step's 2-D attention mask and cached length to the trunk call, which sends the
new tokens only and tells the edge to extend the session's trunk cache (`edge_server.kv_cache`).
`use_cache=False`: no caches; every step sends the whole sequence so far.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from device_client.autograd import ForwardContext
from splitft.errors import FailedPrecondition

CAUSAL_FAMILIES = ("llama", "gpt2")


@contextmanager
def _step_hook(root: nn.Module, step: Callable[[torch.Tensor | None, int | None], None]) -> Iterator[None]:
    """Before each forward of `root`: its attention mask and how many tokens its cache holds."""

    def before(_module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        cached = cache is not None and kwargs.get("use_cache", True)
        step(
            kwargs.get("attention_mask"),
            int(cache.get_seq_length()) if cached and cache is not None else None,
        )

    handle = root.register_forward_pre_hook(before, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def split_generate(
    net: nn.Module, root: nn.Module, family: str, context: ForwardContext, **kwargs: Any
) -> torch.Tensor:
    """`net.generate(**kwargs)` (net: the peft model or the HF model), in eval mode, no grad."""
    if family not in CAUSAL_FAMILIES:
        raise FailedPrecondition(
            f"generate() is for causal language models ({', '.join(CAUSAL_FAMILIES)}); "
            f"this is a {type(root).__name__}"
        )
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad(), context.decoding() as step, _step_hook(root, step):
            out = net.generate(**kwargs)  # type: ignore[operator]
    finally:
        net.train(was_training)
    return out.sequences if hasattr(out, "sequences") else out
