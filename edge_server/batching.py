"""Cross-session batching of the trunk: forwards of different sessions that arrive together run as
one trunk pass, and their backwards run together through that pass's shared graph.

Design (docs/architecture.md, "Cross-session batching"):
- Which forwards batch: same served model, same trunk blocks, same train/eval mode and graph
  keeping, same sequence length and dtype, and the same optional inputs (attention mask, position
  ids). Length buckets, not padding: a padded row would change the shapes dropout draws and the
  numbers attention sees, so batched and unbatched runs could not be equal.
- The frozen base matmuls run once for all rows; each session's LoRA applies to its own rows
  (`edge_server.batched_trunk`); each session's dropout draws from its own generator
  (`splitft.model.randomness`), so its masks are the same batched or alone.
- Backward: the pass keeps one graph. Sessions whose backwards arrive within the window are run as
  one `torch.autograd.grad` call (zero gradient for the rows of sessions not in it), asking only for
  their own adapter parameters and inputs; a late session runs its own call on the same graph. The
  graph is kept (retain_graph) until every session of the pass has run its backward or dropped its
  forward, then freed. Gradients are returned, not accumulated by autograd, so a session's `.grad`
  is touched only by its own thread under its own lock.
- A batch of one runs on the session's own tree, exactly as with batching off.
"""

from __future__ import annotations

import logging
import os
import threading
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from peft.tuners.lora.layer import Linear as LoraLinear

from edge_server.batched_trunk import BatchedTrunks, Segment
from edge_server.gather import Gather, RecentPeers, Slots
from splitft.model.loading import LoadedSpan
from splitft.model.randomness import RowStream, RowStreams
from splitft.model.routing import RoutedRandomness

logger = logging.getLogger(__name__)

# Forwards of more trunk tokens than this run alone: their matmuls are already full, and on this
# 2-core CPU `bench edge` measured batching at 8 x 128 tokens per device 0.87x-0.96x of batching off
# (more waiting, no gain), at 1 x 64 tokens 1.1x-1.4x.
MAX_SHARED_TOKENS = 512


@dataclass
class ForwardItem:
    """One session's forward, as the batcher needs it (inputs already checked by the session)."""

    session_id: str
    span: LoadedSpan
    start: int
    stop: int
    hidden: torch.Tensor
    mask: torch.Tensor | None
    positions: torch.Tensor | None
    training: bool
    keep: bool  # keep the graph for a backward
    need_input_grad: bool
    lora: dict[str, LoraLinear]
    params: list[torch.nn.Parameter]  # the session's trainable trunk parameters
    generator: torch.Generator
    stochastic: bool  # the session's tree draws dropout when training
    output: torch.Tensor | None = None  # None after the batch: run alone
    pending: SharedPending | None = None

    def key(self) -> tuple:
        """Forwards with equal keys may share a pass."""
        return (
            id(self.span),
            self.start,
            self.stop,
            self.training,
            self.keep,
            tuple(self.hidden.shape[1:]),
            self.hidden.dtype,
            self.mask is None,
            self.positions is None,
        )


@dataclass
class SharedPending:
    """A session's kept forward inside a shared pass: its row slice of the pass's graph."""

    shared: SharedPass
    index: int

    @property
    def shape(self) -> torch.Size:
        """The shape of this session's forward output (what its gradient must have)."""
        segment = self.shared.segments[self.index]
        return torch.Size((segment.stop - segment.start, *self.shared.out.shape[1:]))

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of this session's forward output."""
        return self.shared.out.dtype

    @property
    def device(self) -> torch.device:
        """Where the pass's output is (this session's gradient goes there)."""
        return self.shared.out.device

    def drop(self) -> None:
        """The session will not run this backward (dropped, closed or expired)."""
        self.shared.abandon(self.index)


@dataclass
class _PassSegment:
    start: int
    stop: int
    inputs: torch.Tensor | None  # leaf whose gradient the session asked for
    params: list[torch.nn.Parameter]


@dataclass
class BackwardItem:
    """One session's backward through a shared pass; the batch fills in the gradients."""

    pending: SharedPending
    grad: torch.Tensor
    param_grads: list[torch.Tensor | None] = field(default_factory=list)
    input_grad: torch.Tensor | None = None


class SharedPass:
    """The graph of one batched forward, kept until each of its sessions has used or dropped it."""

    def __init__(self, out: torch.Tensor, segments: list[_PassSegment]) -> None:
        self.out = out
        self.segments = segments
        self.outstanding = set(range(len(segments)))
        self._lock = threading.Lock()

    def abandon(self, index: int) -> None:
        """Segment `index` will not run a backward; the graph is freed once none is outstanding."""
        with self._lock:
            self.outstanding.discard(index)
            if not self.outstanding:
                self._free()

    def _free(self) -> None:
        self.out = self.out.detach()  # drops the graph and every tensor it saved
        for segment in self.segments:
            segment.inputs = None

    def backward(self, items: list[BackwardItem]) -> None:
        """Back-propagate the gradients of `items` (each its own rows) in one autograd call."""
        with self._lock:
            if any(item.pending.index not in self.outstanding for item in items):
                raise RuntimeError("backward through a shared pass segment that was used or dropped")
            out = self.out
        grad_out = torch.zeros_like(out)
        wanted: list[torch.Tensor] = []
        for item in items:
            segment = self.segments[item.pending.index]
            grad_out[segment.start : segment.stop] = item.grad
            wanted.extend(segment.params)
            if segment.inputs is not None:
                wanted.append(segment.inputs)
        grads = (
            torch.autograd.grad(out, wanted, grad_out, retain_graph=True, allow_unused=True) if wanted else ()
        )
        offset = 0
        for item in items:
            segment = self.segments[item.pending.index]
            item.param_grads = list(grads[offset : offset + len(segment.params)])
            offset += len(segment.params)
            if segment.inputs is not None:
                item.input_grad = grads[offset]
                offset += 1
        for item in items:
            self.abandon(item.pending.index)


@dataclass
class BatchStats:
    """What the batcher did (for metrics, tests and benchmarks)."""

    shared_passes: int = 0  # trunk passes run for more than one session
    shared_rows: int = 0  # rows those passes carried
    shared_forwards: int = 0  # forwards that ran in a shared pass
    alone_forwards: int = 0  # forwards that ran on their session's own tree
    shared_backwards: int = 0  # autograd calls through shared passes
    backward_items: int = 0  # session backwards those calls served
    stacked_lora_calls: int = 0  # adapted layer calls in shared passes whose LoRA paths ran as one bmm

    def add(self, **counts: int) -> None:
        """Add `counts` to the named fields."""
        for name, count in counts.items():
            setattr(self, name, getattr(self, name) + count)


class TrunkBatcher:
    """Gathers forwards (and backwards) of concurrent sessions into shared trunk passes."""

    def __init__(self, window_seconds: float, parallel_passes: int | None = None) -> None:
        self.window = window_seconds
        self.parallel_passes = parallel_passes or max(
            1, len(os.sched_getaffinity(0)) // torch.get_num_threads()
        )
        self.stats = BatchStats()
        self._stats_lock = threading.Lock()
        self.trees = BatchedTrunks()
        # Shared passes, forward and backward, run in as many slots as passes run side by side.
        slots = Slots(self.parallel_passes)
        self._forwards: Gather[ForwardItem] = Gather(window_seconds, slots)
        self._backwards: Gather[BackwardItem] = Gather(window_seconds, slots)
        # A session that has not sent a forward of a kind for this long is not waited for.
        self._peers = RecentPeers(max(1.0, 50 * window_seconds))

    def forward(self, item: ForwardItem) -> None:
        """Run `item` in a shared pass; afterwards `item.output` is set, or None: run it alone."""
        key = item.key()
        peers = self._peers.arrive(key, item.session_id)
        # Spread the peers over as many concurrent passes as the CPU runs side by side (cores over
        # intra-op threads): with one thread per op, two passes of four keep two cores busy, where
        # one pass of eight would leave a core idle while the devices answer between phases.
        expected = -(-peers // self.parallel_passes)
        self._forwards.submit(key, item, expected, self._run_forwards)

    def backward(self, pending: SharedPending, grad: torch.Tensor) -> BackwardItem:
        """Back-propagate `grad` through the session's slice of its shared pass, batched with the
        other sessions of that pass whose backwards arrive within the window."""
        item = BackwardItem(pending, grad)
        expected = len(pending.shared.outstanding)
        self._backwards.submit(id(pending.shared), item, expected, self._run_backwards)
        return item

    def _run_backwards(self, items: list[BackwardItem]) -> None:
        groups = _disjoint_groups(items)
        for group in groups:
            items[0].pending.shared.backward(group)
        self._count(shared_backwards=len(groups), backward_items=len(items))

    def _count(self, **counts: int) -> None:
        with self._stats_lock:
            self.stats.add(**counts)

    def forget(self, session_id: str) -> None:
        """A session closed: batches stop waiting for it."""
        self._peers.forget(session_id)

    def _run_forwards(self, items: list[ForwardItem]) -> None:
        if len(items) == 1:
            self._count(alone_forwards=1)
            return  # alone: its own tree, exactly the unbatched path
        try:
            stacked = _run_shared(self.trees, items)
        except Exception:  # a fault of the shared path must not cost the sessions their step
            logger.exception("shared trunk pass of %d sessions failed; running them one by one", len(items))
            for item in items:
                item.output, item.pending = None, None
            self._count(alone_forwards=len(items))
            return
        rows = sum(item.hidden.shape[0] for item in items)
        self._count(shared_passes=1, shared_rows=rows, shared_forwards=len(items), stacked_lora_calls=stacked)


def _disjoint_groups(items: list[BackwardItem]) -> list[list[BackwardItem]]:
    """`items` in groups whose sessions share no parameter, in arrival order. Sessions of one shared
    trunk adapter (`edge_server.shared_adapters`) train the same parameters: in one autograd call
    each would get the sum of their gradients, so each runs its own call on the pass's graph."""
    groups: list[tuple[set[int], list[BackwardItem]]] = []
    for item in items:
        params = {id(p) for p in item.pending.shared.segments[item.pending.index].params}
        home = next((g for g in groups if not g[0] & params), None)
        if home is None:
            groups.append((set(params), [item]))
        else:
            home[0].update(params)
            home[1].append(item)
    return [group for _, group in groups]


def _run_shared(trees: BatchedTrunks, items: list[ForwardItem]) -> int:
    """One trunk pass over every item's rows; sets each item's output (and kept pending). Returns
    how many adapted layer calls ran their LoRA paths stacked."""
    first = items[0]
    tree = trees.acquire(first.span, first.start, first.stop)
    try:
        hiddens, segments, plan_segments, row = [], [], [], 0
        for item in items:
            rows = item.hidden.shape[0]
            leaf = item.hidden.detach().requires_grad_(True) if item.keep and item.need_input_grad else None
            hiddens.append(leaf if leaf is not None else item.hidden)
            segments.append(_PassSegment(row, row + rows, leaf, item.params))
            plan_segments.append(Segment(row, row + rows, item.lora, item.generator))
            row += rows
        tree.plan.segments = plan_segments
        tree.plan.targeted = frozenset(name for item in items for name in item.lora)
        stochastic = first.training and any(item.stochastic for item in items)
        if stochastic:
            streams = RowStreams([RowStream(s.start, s.stop, s.generator) for s in plan_segments])
            tree.plan.randomness = RoutedRandomness(streams, tree.root)
        with torch.set_grad_enabled(first.keep), tree.plan.randomness or nullcontext():
            out = tree.run(
                torch.cat(hiddens),
                _cat_rows([i.mask for i in items], items),
                _cat_rows([i.positions for i in items], items),
                training=first.training,
            )
        stacked = tree.plan.stacked_calls
    finally:
        trees.release(tree)
    shared = SharedPass(out, segments) if first.keep else None
    for index, (item, segment) in enumerate(zip(items, segments, strict=True)):
        item.output = out[segment.start : segment.stop].detach()
        item.pending = SharedPending(shared, index) if shared is not None else None
    return stacked


def _cat_rows(tensors: list[torch.Tensor | None], items: list[ForwardItem]) -> torch.Tensor | None:
    """Per-session [rows or 1, tokens] tensors as one [all rows, tokens] tensor (None if absent)."""
    if tensors[0] is None:
        return None
    parts = [
        t.expand(item.hidden.shape[0], -1) for t, item in zip(tensors, items, strict=True) if t is not None
    ]
    return torch.cat(parts)
