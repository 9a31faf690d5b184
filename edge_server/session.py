"""One device's session on the edge: its view of the shared trunk, its adapter, optimizer and graphs.

Plain compute, no gRPC: the wire state (codecs, encoders) belongs to the transport
(`edge_server.session_wire`), the optimizer policy to `edge_server.trunk_optim`, the checks on a
forward's tensors to `edge_server.session_inputs`. The frozen trunk
weights are shared by every session; a session owns a shallow copy of the trunk's modules (so
per-session LoRA layers, train/eval mode and autograd graphs never touch another session) plus its
adapter parameters and optimizer state.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from peft import LoraConfig, get_peft_model_state_dict
from torch import nn

from edge_server.admission import SessionMemory, untracked
from edge_server.batched_trunk import batchable_layers
from edge_server.batching import MAX_SHARED_TOKENS, ForwardItem, SharedPending, TrunkBatcher
from edge_server.kv_cache import SessionKVCache
from edge_server.limits import DataPlaneLimits, check_adapter_size
from edge_server.session_inputs import check_forward_inputs, check_gradient
from edge_server.session_tree import own_tree
from edge_server.trunk_optim import TrunkOptimizer
from splitft.errors import FailedPrecondition, InvalidArgument, NotFound
from splitft.methods.scorer import MeasuredLayer, TrunkScorer
from splitft.methods.sparse import sparse_state_dict
from splitft.methods.wire import TrunkMethod
from splitft.model.adapter_state import load_adapter_state
from splitft.model.loading import LoadedSpan
from splitft.model.randomness import has_dropout, seeded
from splitft.model.routing import RoutedRandomness
from splitft.model.spans import SplitSpec

if TYPE_CHECKING:
    from edge_server.shared_view import SharedAdapterView

logger = logging.getLogger(__name__)

MAX_PENDING_FORWARDS = 64  # kept graphs per session; the oldest is dropped beyond this


@dataclass
class Pending:
    """A forward whose graph is kept until the device sends its backward."""

    inputs: torch.Tensor
    output: torch.Tensor

    @property
    def shape(self) -> torch.Size:
        """The forward output's shape (what its gradient must have)."""
        return self.output.shape

    @property
    def dtype(self) -> torch.dtype:
        """The forward output's dtype."""
        return self.output.dtype

    @property
    def device(self) -> torch.device:
        """Where the forward output is (its gradient goes there)."""
        return self.output.device

    def drop(self) -> None:
        """Nothing shared to release: the graph goes with this object."""


@dataclass(frozen=True)
class SessionOwner:
    """Who opened a session, from its token ("" when tokens are off): for per-device limits and
    `SessionManager.close_where`."""

    device: str = ""
    job: str = ""


class TrunkSession:
    """The edge half of one split model."""

    def __init__(
        self,
        session_id: str,
        span: LoadedSpan,
        spec: SplitSpec,
        lora_config: LoraConfig | None,
        seed: int,
        method: TrunkMethod | None = None,
        limits: DataPlaneLimits | None = None,
        shared: SharedAdapterView | None = None,
    ) -> None:
        self.session_id = session_id
        self.limits = limits or DataPlaneLimits()
        self.owner = SessionOwner()
        self.memory: SessionMemory = untracked()  # the SessionManager links it to the edge's accountant
        self.span = span
        self.spec = spec
        self.lock = threading.Lock()
        self.last_used = time.monotonic()
        self.optim = TrunkOptimizer([])
        self._pending: OrderedDict[int, Pending | SharedPending] = OrderedDict()
        self.batcher: TrunkBatcher | None = None  # set by the manager when batching is on
        self.shared = shared  # a view of its job's one trunk adapter (edge_server.shared_adapters)
        if shared is not None:  # which is also this session's optimizer, over its own gradients
            self.peft_model, self.root, self.optim = None, shared.session_root(), shared
        else:
            self.peft_model, self.root = own_tree(span, spec, lora_config, seed, self.limits)
        self.trainable = [p for p in self.root.parameters() if p.requires_grad]
        check_adapter_size(self.trainable_parameters, self.limits)
        # The selection method's trunk half (splitft.methods.scorer), built through the registry.
        self.selection: TrunkScorer | None = method.scorer(self.root) if method is not None else None
        if self.selection is not None:  # what it selects is the session's adapter: the same bound
            self.selection.max_entries = self.limits.max_adapter_parameters
            self.selection.before_apply = lambda masks: self.memory.admit_selection(masks)
        self.stochastic = has_dropout(self.root)  # the tree's draws are routed (own_tree, snapshot_tree)
        self.rng = seeded(seed ^ 0x5EED)  # this session's dropout masks, whatever its neighbours do
        # Plain LoRA (or no adapter) can share trunk passes; selection methods and LoRA variants run alone.
        self.lora_layers = batchable_layers(self.root) if self.selection is None else None
        self.kv_cache = SessionKVCache(span.config, spec.trunk_range, self.limits.max_cache_tokens)

    @property
    def trainable(self) -> list[nn.Parameter]:
        """The trainable trunk parameters (the adapter, or what a selection method chose)."""
        return self.optim.params

    @trainable.setter
    def trainable(self, params: list[nn.Parameter]) -> None:
        """Set what trains (a selection method swaps the adapter for its chosen entries)."""
        self.optim.params = params

    @property
    def steps(self) -> int:
        """Optimizer steps taken."""
        return self.optim.steps

    @property
    def pending_forwards(self) -> int:
        """Forwards whose graph is kept for a backward (none between optimizer steps)."""
        return len(self._pending)

    @property
    def trainable_parameters(self) -> int:
        """How many trunk parameters this session trains."""
        return sum(p.numel() for p in self.trainable)

    def touch(self) -> None:
        """Mark the session used now (the TTL counts from its last use)."""
        self.last_used = time.monotonic()

    def forward(
        self,
        forward_id: int,
        inputs: dict[str, torch.Tensor],
        *,
        training: bool,
        requires_grad: bool,
        need_input_grad: bool,
        past_length: int | None = None,
    ) -> torch.Tensor:
        """Run the trunk span on `inputs` ('hidden', optional 'attention_mask' and 'position_ids');
        keeps the graph under `forward_id` when a backward will follow. Returns the output, detached.
        `past_length` (generate): against the session's key/value cache, after that many tokens."""
        if past_length is not None:
            if training or requires_grad:
                raise InvalidArgument(
                    "a use_cache forward is no-grad inference: training and requires_grad false"
                )
            return self._forward_cached(inputs, past_length)
        hidden, mask, positions = check_forward_inputs(inputs, self.span, self.limits)
        self.root.train(training)
        keep = requires_grad and (need_input_grad or bool(self.trainable) or self._measuring_gradients)
        if keep:
            self.memory.check(hidden.shape)  # RESOURCE_EXHAUSTED before the pass if its graph cannot fit
        shared = self._forward_shared(hidden, mask, positions, training, keep, need_input_grad)
        if shared is not None:
            if shared.pending is not None:
                self._keep(forward_id, shared.pending)
            assert shared.output is not None
            return shared.output
        if keep and need_input_grad:
            hidden.requires_grad_(True)
        with torch.set_grad_enabled(keep):
            out = self._run(hidden, mask, positions, seeded=training and self.stochastic)
        if keep:
            self._keep(forward_id, Pending(hidden, out))
        return out.detach()

    def _forward_cached(self, inputs: dict[str, torch.Tensor], past_length: int) -> torch.Tensor:
        """The new tokens through the trunk blocks, their keys and values kept (edge_server.kv_cache)."""
        hidden, mask, positions = check_forward_inputs(
            inputs, self.span, self.limits, past_length=past_length
        )
        cache = self.kv_cache.begin(past_length, hidden.shape[0], hidden.shape[1])
        self.root.train(False)
        start, stop = self.spec.trunk_start, self.spec.trunk_stop
        try:
            with torch.no_grad():
                out = self.span.family.run_trunk(self.root, hidden, mask, positions, start, stop, cache=cache)
        except BaseException:
            self.kv_cache.free()  # some blocks may have cached this forward's tokens already
            raise
        self.kv_cache.advanced(hidden.shape[1])
        return out

    def _forward_shared(
        self,
        hidden: torch.Tensor,
        mask: torch.Tensor | None,
        positions: torch.Tensor | None,
        training: bool,
        keep: bool,
        need_input_grad: bool,
    ) -> ForwardItem | None:
        """Offer the forward to the batcher; the item if it ran in a shared pass, None to run alone."""
        if self.batcher is None or self.lora_layers is None:
            return None
        if hidden.shape[0] * hidden.shape[1] > MAX_SHARED_TOKENS:
            return None  # a big forward fills the trunk's matmuls alone
        item = ForwardItem(
            self.session_id,
            self.span,
            self.spec.trunk_start,
            self.spec.trunk_stop,
            hidden,
            mask,
            positions,
            training,
            keep,
            need_input_grad,
            self.lora_layers,
            list(self.trainable),
            self.rng,
            self.stochastic,
        )
        self.batcher.forward(item)
        return item if item.output is not None else None

    def start_calibration(self) -> int:
        """Score the trunk from the forwards that follow; returns the target layers' output rows."""
        if self.selection is None:
            raise FailedPrecondition(
                "this session trains LoRA (or nothing) on the trunk; no calibration needed"
            )
        return self.selection.start()

    @property
    def _measuring_gradients(self) -> bool:
        return self.selection is not None and self.selection.measuring_gradients

    def select_parameters(self, k_per_row: int) -> int:
        """SelectParameters (TaskEdge: keep the top `k_per_row` entries of every trunk target row)."""
        chosen = self._scorer("SelectParameters").select_parameters(k_per_row)
        self.trainable = [p for p in self.root.parameters() if p.requires_grad]
        self.memory.settle(self.trainable)
        return chosen

    def fisher_potentials(self) -> tuple[list[MeasuredLayer], int, dict[str, torch.Tensor]]:
        """FisherPotentials (TinyTrain: the trunk layers in forward order, N and their potentials)."""
        return self._scorer("FisherPotentials").measurements()

    def select_channels(self, channels: dict[str, torch.Tensor]) -> int:
        """SelectChannels (TinyTrain: train these output rows of these trunk layers)."""
        chosen = self._scorer("SelectChannels").select_channels(channels)
        self.trainable = [p for p in self.root.parameters() if p.requires_grad]
        self.memory.settle(self.trainable)
        return chosen

    def _scorer(self, call: str) -> TrunkScorer:
        if self.selection is None:
            raise FailedPrecondition(f"{call} is for selection sessions; this one trains LoRA (or nothing)")
        return self.selection

    def _run(
        self, hidden: torch.Tensor, mask: torch.Tensor | None, positions: torch.Tensor | None, *, seeded: bool
    ) -> torch.Tensor:
        """Run the trunk span; with dropout active, draw from this session's own RNG stream."""
        run = self.span.family.run_trunk
        start, stop = self.spec.trunk_start, self.spec.trunk_stop
        if self.selection is not None:
            self.selection.on_forward(mask)  # e.g. TaskEdge keeps padding out of its norms
        if not seeded:
            return run(self.root, hidden, mask, positions, start, stop)
        with RoutedRandomness.single(self.rng, self.root):  # thread-local: no lock across sessions
            return run(self.root, hidden, mask, positions, start, stop)

    def backward(self, forward_id: int, grad: torch.Tensor, *, zero_grad_first: bool) -> torch.Tensor | None:
        """Back-propagate `grad` through kept forward `forward_id` (used up); the input gradient if asked."""
        pending = self._pending.get(forward_id)
        if pending is None:
            raise NotFound(
                f"no kept forward {forward_id} in session {self.session_id} (already used or expired)"
            )
        # Validate before consuming the kept graph: a malformed gradient must not cost the forward.
        grad = check_gradient(grad, pending.shape, pending.device, pending.dtype)
        del self._pending[forward_id]
        self.memory.drop(forward_id)
        if zero_grad_first:
            self.optim.zero_grad()
        if isinstance(pending, SharedPending):
            return self._backward_shared(pending, grad)
        if self.shared is not None:  # into this session's own gradients, never the adapter's .grad
            return self.shared.backward(pending.output, pending.inputs, grad)
        pending.output.backward(grad)
        if self.selection is not None:
            self.selection.on_backward(grad.shape[0])
        return pending.inputs.grad if pending.inputs.requires_grad else None

    def _backward_shared(self, pending: SharedPending, grad: torch.Tensor) -> torch.Tensor | None:
        """Backward through a shared pass; the gradients come back and are accumulated here, in
        this session's thread, as `Tensor.backward` would."""
        assert self.batcher is not None  # a shared pending exists only when batching is on
        try:
            item = self.batcher.backward(pending, grad)
        except BaseException:
            pending.drop()  # the graph must not outlive a failed backward
            raise
        self.optim.accumulate(pending.shared.segments[pending.index].params, item.param_grads)
        return item.input_grad

    def configure_optimizer(self, name: str, hparams: dict[str, Any]) -> None:
        """Build the trunk optimizer `name` (see `edge_server.trunk_optim`) with `hparams`."""
        self.optim.check_name(name)  # refused before the memory accounting changes
        self.memory.settle(self.trainable, name, hparams)  # its state per parameter must fit first
        self.optim.configure(name, hparams)

    def grad_norm_sq(self, *, zero_grad_first: bool) -> float:
        """The squared 2-norm of the trunk adapter's gradients."""
        return self.optim.grad_norm_sq(zero_grad_first=zero_grad_first)

    def step(self, hparams: dict[str, Any], grad_scale: float, *, zero_grad_first: bool) -> int:
        """One trunk optimizer step; returns the steps taken so far."""
        return self.optim.step(hparams, grad_scale, zero_grad_first=zero_grad_first)

    def export_adapter(self) -> dict[str, torch.Tensor]:
        """The trunk adapter's tensors (peft names), or the selection's sparse deltas."""
        return self.export_with_steps()[0]

    def export_with_steps(self) -> tuple[dict[str, torch.Tensor], int]:
        """`export_adapter` and the optimizer steps the adapter has taken, read together (a shared
        adapter's: every session's steps)."""
        if self.shared is not None:
            return self.shared.export()
        return self._export_own(), self.steps

    def _export_own(self) -> dict[str, torch.Tensor]:
        if self.selection is not None:
            return {k: v.detach().clone() for k, v in sparse_state_dict(self.root).items()}
        if self.peft_model is None:
            return {}
        state = get_peft_model_state_dict(self.peft_model)
        return {k: v.detach().clone() for k, v in state.items()}

    def load_adapter(self, state: dict[str, torch.Tensor]) -> int:
        """Set the trunk adapter to `state` (every key `export_adapter` gives, same shapes), before
        the session trains; returns how many tensors were loaded."""
        if self.shared is not None:
            return self.shared.load(state, session_started=bool(self.steps or self._pending))
        if self.peft_model is None or self.selection is not None:
            raise FailedPrecondition("only a session training LoRA on the trunk can load a trunk adapter")
        if self.steps or self._pending:
            raise FailedPrecondition("a trunk adapter is loaded before the session's first forward and step")
        return load_adapter_state(self.peft_model, state, what="session's trunk adapter")

    def release(self) -> None:
        """Drop graphs, adapter and optimizer state so their memory can be freed."""
        for pending in self._pending.values():
            pending.drop()
        self._pending.clear()
        if self.batcher is not None:
            self.batcher.forget(self.session_id)
        self.optim.release()
        self.kv_cache.free()
        self.peft_model = None
        self.lora_layers = None
        self.memory.close()

    def _keep(self, forward_id: int, pending: Pending | SharedPending) -> None:
        try:
            self.memory.keep(forward_id, pending.shape)  # RESOURCE_EXHAUSTED: the graph is freed
        except BaseException:
            pending.drop()
            raise
        self._pending[forward_id] = pending
        while len(self._pending) > MAX_PENDING_FORWARDS:
            dropped, old = self._pending.popitem(last=False)
            old.drop()
            self.memory.drop(dropped)
            logger.warning(
                "session %s: dropped kept forward %d (more than %d pending)",
                self.session_id,
                dropped,
                MAX_PENDING_FORWARDS,
            )
