"""The edge's trunk as a local autograd operation, and the context the device's forward hands it.

`TrunkEntry` sits where the first trunk block was. In forward it sends the activations (plus the
attention mask and position ids the edge needs to rebuild masks and rotary tables) and returns
the trunk's output; in backward it sends the output gradient and returns the input gradient. The
autograd context keeps only ids, never tensors that live on the edge.

Hugging Face's block signature does not carry everything the trunk call needs, so the split
model's forward passes the rest through one `ForwardContext`, set only through its context
managers: `forward(attention_mask)` (every forward), `pipelined(on_submit)` (micro-batch
pipelining), `anchored()` (TinyTrain's Fisher pass) and `decoding()` (generate).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from device_client.head_skip import HeadSkip
from device_client.privacy import PrivacyGuard
from device_client.trunk import RemoteTrunk


class ForwardContext(threading.local):
    """What the device's forward call knows that the blocks' arguments do not carry.

    Thread-local: micro-batches of one pipelined step run their forwards in threads of their own.
    Read by `TrunkEntry`; set only through the context managers below, each of which restores the
    previous value on exit.
    """

    def __init__(self) -> None:
        self._attention_mask: torch.Tensor | None = None
        self._anchors: list[torch.Tensor] | None = None
        self._on_submit: Callable[[], None] | None = None
        self._past_length: int | None = None

    @property
    def attention_mask(self) -> torch.Tensor | None:
        """The 2-D attention mask of the forward in progress in this thread (None: no mask)."""
        return self._attention_mask

    @property
    def anchors(self) -> list[torch.Tensor] | None:
        """Inside `anchored()`: the list every trunk call appends its anchor to."""
        return self._anchors

    @property
    def on_submit(self) -> Callable[[], None] | None:
        """Inside `pipelined(on_submit)`: called once this thread's trunk forward is on its way."""
        return self._on_submit

    @contextmanager
    def forward(self, attention_mask: torch.Tensor | None) -> Iterator[None]:
        """One forward of the split model in this thread, with its 2-D `attention_mask`."""
        previous, self._attention_mask = self._attention_mask, attention_mask
        try:
            yield
        finally:
            self._attention_mask = previous

    @property
    def past_length(self) -> int | None:
        """Inside `decoding()` with caches: the tokens the trunk cache holds before this forward."""
        return self._past_length

    @contextmanager
    def decoding(self) -> Iterator[Callable[[torch.Tensor | None, int | None], None]]:
        """`generate()`: yields the setter its per-forward hook calls with each forward's 2-D
        attention mask and cached length (None: no caches, the whole sequence goes to the edge)."""
        previous = self._attention_mask, self._past_length

        def step(attention_mask: torch.Tensor | None, past_length: int | None) -> None:
            self._attention_mask, self._past_length = attention_mask, past_length

        try:
            yield step
        finally:
            self._attention_mask, self._past_length = previous

    @contextmanager
    def pipelined(self, on_submit: Callable[[], None]) -> Iterator[None]:
        """Forwards in this thread call `on_submit` once their activations are sent to the edge,
        so the next micro-batch can start while the edge works on this one."""
        previous, self._on_submit = self._on_submit, on_submit
        try:
            yield
        finally:
            self._on_submit = previous

    @contextmanager
    def anchored(self) -> Iterator[list[torch.Tensor]]:
        """TinyTrain calibration: yields the list every trunk call in this thread appends its anchor
        to. The Fisher pass differentiates with respect to the anchors, so each trunk backward runs
        (the edge measures its layers' gradients there) even when nothing on either side trains yet."""
        anchors: list[torch.Tensor] = []
        previous, self._anchors = self._anchors, anchors
        try:
            yield anchors
        finally:
            self._anchors = previous


class _TrunkFunction(torch.autograd.Function):
    """h_k -> h_{L-j} through the edge; backward sends dL/dh_{L-j} and returns dL/dh_k."""

    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        anchor: torch.Tensor,
        trunk: RemoteTrunk,
        extras: dict[str, torch.Tensor],
        training: bool,
        need_input_grad: bool,
        on_submit: Callable[[], None] | None,
        guard: PrivacyGuard | None,
    ) -> torch.Tensor:
        forward_id, out = trunk.forward(
            hidden,
            extras,
            training=training,
            requires_grad=True,
            need_input_grad=need_input_grad,
            on_submit=on_submit,
        )
        ctx.trunk = trunk
        ctx.forward_id = forward_id
        ctx.need_input_grad = need_input_grad
        ctx.guard = guard
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
        sent = ctx.guard.outgoing_gradient(grad_out) if ctx.guard is not None else grad_out
        grad_in = ctx.trunk.backward(ctx.forward_id, sent)
        if grad_in is not None:  # cast on arrival to where and what the device computes in
            grad_in = grad_in.to(device=grad_out.device, dtype=grad_out.dtype)
        return (grad_in if ctx.need_input_grad else None), None, None, None, None, None, None, None


class TrunkEntry(nn.Module):
    """Stands where trunk block k was: runs blocks[k:L-j] on the edge."""

    def __init__(
        self, trunk: RemoteTrunk | None, context: ForwardContext, guard: PrivacyGuard | None = None
    ) -> None:
        super().__init__()
        self.trunk = trunk
        self.context = context
        self.guard = guard  # the privacy defenses (docs/privacy.md); None: what is computed is sent
        # privacy.head_skip: a private map of h_k (before clip and noise) added to the trunk's output,
        # so the blocks after the trunk also read what only the device holds; set by the split model.
        self.skip: HeadSkip | None = None

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The trunk's output for `hidden_states`, plus the head skip's map of them when it is on."""
        out = self._trunk_output(hidden_states, **kwargs)
        return out if self.skip is None else out + self.skip(hidden_states)

    def _trunk_output(self, hidden_states: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """Run the trunk on the edge: differentiable when a backward will need it, else detached."""
        if self.trunk is None:
            raise RuntimeError("the split model is closed")
        extras = {}
        if self.context.attention_mask is not None:
            extras["attention_mask"] = self.context.attention_mask
        positions = kwargs.get("position_ids")
        if isinstance(positions, torch.Tensor):
            extras["position_ids"] = positions
        computed, guard = hidden_states, self.guard
        if guard is not None and guard.warming_up(self.training):  # private warm-up: nothing leaves
            return guard.warmup_step(computed, self.context.attention_mask)  # raises, or a local trunk
        if guard is not None:  # clip and noise h_k before it leaves; the device trains through it
            hidden_states = guard.outgoing_activations(hidden_states)
        need_input_grad = hidden_states.requires_grad
        anchors = self.context.anchors
        withheld = guard is not None and guard.config.withhold_gradients
        if withheld:  # no gradient will be sent: run the trunk detached (the NoPeek penalty still joins)
            need_input_grad, anchors = False, None
        if torch.is_grad_enabled() and (need_input_grad or self.trunk.trainable or anchors is not None):
            # The anchor makes the output require grad even when the input does not (only the
            # trunk adapter trains), so autograd still calls backward and the edge gets its grads.
            anchor = torch.empty(0, requires_grad=True)
            if anchors is not None:
                anchors.append(anchor)
            out = _TrunkFunction.apply(
                hidden_states,
                anchor,
                self.trunk,
                extras,
                self.training,
                need_input_grad,
                self.context.on_submit,
                guard,
            )
            return (
                guard.with_penalty(out, computed, self.context.attention_mask) if guard is not None else out
            )
        _, out = self.trunk.forward(
            hidden_states.detach(),
            extras,
            training=self.training,
            requires_grad=False,
            need_input_grad=False,
            on_submit=self.context.on_submit,
            past_length=self.context.past_length,
        )
        if withheld and guard is not None:
            return guard.with_penalty(out, computed, self.context.attention_mask)
        return out
