"""TinyTrain's cost model: what one training step of a selection allocates, and its backward MACs.

The memory a selection costs is what `bench memory`'s instrument (torch's allocator, through the
profiler) sees a training step allocate above what was live when it started (the weights, the
trainable deltas, the batch). For a selection whose earliest trained layer (in forward order) is
`L`, with `b` bytes per element, AdamW, and `r*out` rows of an `out x in` layer trained on `T`
tokens:

* state: `3 * b * r*out*in` per trained layer: the rows' gradient and AdamW's two moments (the
  moments live through the whole step from step 2 on; the gradients appear during backward);
* kept: what the trained layers themselves save for backward: `b * T * in` per distinct input
  (q, k and v read one input; a trained row needs its whole input for its weight gradient) and
  `b * T * r*out`, the rows' product, which `index_add` saves whole (sparse.py's rows layout);
* the rest of the step's working set, MEASURED op by op during the Fisher pass (live.py: every
  aten op's outputs, their lifetimes, and which of them autograd saved after which target layer;
  the pass runs with every parameter frozen, so from each layer on it builds the graph a step
  whose earliest trained layer is that one builds): `forward_peak`, the largest bytes live at any
  op of the forward of such a step (what it keeps from `L` on plus every transient, attention's
  mask and a Python GELU's temporaries included), and `backward_peak`, the same over its backward
  until it reaches `L` (a gradient beside the tensors it is computed from included).

The step's peak is the largest of three: the forward's (`moments` plus the measured peak with
each kept tensor added from the op it comes to exist on, `_forward_peak`), the
backward's `state + kept + backward_peak` (every gradient counted, a bound) and AdamW's step,
`state` plus one trained layer's `b * r*out*in` (its CPU step makes a temporary that size). A
`LayerCost` without `backward_peak` (built by hand) falls back to the Fisher pass's saved bytes:
`state + kept + max(forward_peak, saved_after + max(largest_saved, one layer's rows))`.

MACs: `r*out*in*T` per trained layer for its weight gradient, plus the input-gradient MACs
`out*in*T` of every target layer after `L` (conservative: a parallel branch, k_proj beside q_proj,
is counted though it needs no input gradient).

Across a split every layer has a side: the device's layers and the trunk's (the edge's). The
device is charged its own layers' state, inputs and MACs, and the activations IT saves (measured in
its process: after a trunk layer only its head blocks save); the edge is charged its layers' state,
inputs and MACs (the trunk's kept graphs are the edge's admission estimate's business,
docs/memory.md). The layer score's normaliser is side-independent: its own memory (state + input)
and its backward MACs over the whole model, each trained alone.
"""

from __future__ import annotations

from dataclasses import dataclass

DEVICE = "device"
EDGE = "edge"
OPTIMIZER_COPIES = 3  # a trained entry's gradient and AdamW's exp_avg and exp_avg_sq


@dataclass(frozen=True)
class LayerCost:
    """Backward cost of one Linear/Conv1D for one step (see the module docstring)."""

    out_features: int
    in_features: int
    tokens: int
    side: str = DEVICE  # where the layer trains: DEVICE or EDGE
    saved_after: int = 0  # device bytes autograd saves from this layer's input on (measured)
    largest_saved: int = 0  # the largest single tensor among them
    forward_peak: int = 0  # the forward's largest working set once this layer trains (measured)
    backward_peak: int = 0  # the backward's, until it reaches this layer (measured; 0: not measured)
    input_id: int | None = None  # layers sharing an id read one input tensor (saved once)
    # per target layer (measured, when this one trains first): (name, event its input is no longer
    # held by the replay, forward peak from then on, event its output is made, peak from then on)
    forward_steps: tuple[tuple[str, int, int, int, int], ...] = ()

    def state_bytes(self, channels: int, bytes_per_element: int) -> int:
        return OPTIMIZER_COPIES * bytes_per_element * channels * self.in_features

    def input_bytes(self, bytes_per_element: int) -> int:
        return bytes_per_element * self.tokens * self.in_features

    def memory_bytes(self, channels: int, bytes_per_element: int) -> int:
        """The layer's own memory: state + input (the score's normaliser; activations excluded)."""
        return self.state_bytes(channels, bytes_per_element) + self.input_bytes(bytes_per_element)

    def weight_grad_macs(self, channels: int) -> int:
        return channels * self.in_features * self.tokens

    @property
    def input_grad_macs(self) -> int:
        return self.out_features * self.in_features * self.tokens


@dataclass(frozen=True)
class SelectionCost:
    """Predicted bytes and backward MACs of one training step, per side."""

    memory_bytes: int  # the device's
    macs: int  # the device's
    edge_memory_bytes: int = 0
    edge_macs: int = 0


def _kept(
    costs: dict[str, LayerCost], names: list[str], channels: dict[str, int], bytes_per_element: int
) -> int:
    """What the trained layers themselves keep for backward: each distinct input, and each layer's
    `T x rows` product with its rows, which `index_add` (sparse.py's rows layout) saves whole
    although its backward reads only its shape."""
    outputs = sum(bytes_per_element * costs[n].tokens * channels[n] for n in names)
    return outputs + _inputs(costs, names, bytes_per_element)


def _inputs(costs: dict[str, LayerCost], names: list[str], bytes_per_element: int) -> int:
    seen: set[object] = set()
    total = 0
    for name in names:
        key = costs[name].input_id if costs[name].input_id is not None else ("own", name)
        if key not in seen:
            seen.add(key)
            total += costs[name].input_bytes(bytes_per_element)
    return total


def _forward_peak(
    first: LayerCost,
    trained: list[str],
    channels: dict[str, int],
    costs: dict[str, LayerCost],
    b: int,
    kept: int,
) -> int:
    """The forward's peak with what the trained layers keep: each kept tensor (an input, a rows'
    product) adds to the measured peak from the event it outlives the replay's copy / is made on,
    not before (a last-block layer's input does not exist at a first-block peak). Without the
    measured steps: every kept byte on the whole forward's peak (a bound)."""
    steps = {s[0]: s[1:] for s in first.forward_steps}
    if not all(n in steps for n in trained):
        return kept + first.forward_peak
    adds: dict[object, tuple[int, int, int]] = {}  # (event, peak from it, bytes), inputs once
    for n in trained:
        end, after_end, made, after_made = steps[n]
        key = costs[n].input_id if costs[n].input_id is not None else ("own", n)
        adds.setdefault(key, (end, after_end, costs[n].input_bytes(b)))
        adds[("rows", n)] = (made, after_made, b * costs[n].tokens * channels[n])
    peak, total = first.forward_peak, 0
    for _, after, size in sorted(adds.values()):
        total += size
        peak = max(peak, after + total)
    return peak


def _device_peak(
    first: LayerCost,
    state: int,
    kept: int,
    trained: list[str],
    channels: dict[str, int],
    costs: dict[str, LayerCost],
    b: int,
) -> int:
    """The step's peak: the largest of its forward (AdamW's moments live, not yet the gradients),
    its backward (gradients too) and AdamW's step (activations freed; a parameter-sized temporary)."""
    moments = state * (OPTIMIZER_COPIES - 1) // OPTIMIZER_COPIES
    largest_row_block = max((b * channels[n] * costs[n].in_features for n in trained), default=0)
    if first.backward_peak:  # measured op by op (live.py): every transient is in it
        forward = moments + _forward_peak(first, trained, channels, costs, b, kept)
        backward = state + kept + first.backward_peak
        return max(forward, backward, state + largest_row_block)
    backward = first.saved_after + max(first.largest_saved, largest_row_block)
    return state + kept + max(first.forward_peak, backward)


def sided_cost(
    costs: dict[str, LayerCost], channels: dict[str, int], bytes_per_element: int
) -> SelectionCost:
    """Device and edge cost of training `channels[name]` rows of each named layer.

    `costs` must be in forward order: layers after the earliest trained one pay input gradients.
    """
    if not channels:
        return SelectionCost(0, 0)
    order = list(costs)
    first_index = min(order.index(n) for n in channels)
    first = costs[order[first_index]]
    after = order[first_index + 1 :]
    b = bytes_per_element
    result: dict[str, tuple[int, int]] = {}
    for side in (DEVICE, EDGE):
        trained = [n for n in order if n in channels and costs[n].side == side]
        state = sum(costs[n].state_bytes(channels[n], b) for n in trained)
        memory = state + _kept(costs, trained, channels, b)
        macs = sum(costs[n].weight_grad_macs(channels[n]) for n in trained)
        macs += sum(costs[n].input_grad_macs for n in after if costs[n].side == side)
        if side == DEVICE:
            memory = _device_peak(
                first, state, _kept(costs, trained, channels, b), trained, channels, costs, b
            )
        result[side] = (memory, macs)
    return SelectionCost(*result[DEVICE], *result[EDGE])


def selection_cost(
    costs: dict[str, LayerCost], channels: dict[str, int], bytes_per_element: int
) -> tuple[int, int]:
    """(device bytes, device MACs) of one training step of the selection (all of it in one process)."""
    cost = sided_cost(costs, channels, bytes_per_element)
    return cost.memory_bytes, cost.macs


def whole_macs(costs: dict[str, LayerCost], name: str) -> int:
    """Backward MACs of training all of `name` alone, both sides together."""
    order = list(costs)
    after = order[order.index(name) + 1 :]
    return costs[name].weight_grad_macs(costs[name].out_features) + sum(
        costs[n].input_grad_macs for n in after
    )
