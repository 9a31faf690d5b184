"""What autograd saves for backward during one forward, located by TinyTrain's target layers.

The Fisher pass makes every target layer's output require grad, so from the first target layer on
the forward builds the graph a training step whose earliest trained layer is that one would build:
the bytes saved after a layer's forward begins are the activations backward needs to reach it.
Parameters and buffers are not counted (they are the weights); each storage counts once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from splitft.methods.tinytrain.live import LiveBytes, Storage, peak_from, step_end, suffix_peaks
from splitft.model.quantize import is_quantized, storage_pointers


class SavedBytes:
    """Distinct storages saved in one forward, in order, and where each named layer's forward began."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        self._model = model
        self._names = names
        self._skip = {ptr for t in [*model.parameters(), *model.buffers()] for ptr in storage_pointers(t)}
        self.sizes: list[int] = []  # bytes of each newly saved storage, in the order saved
        self._seen: set[int] = set()
        self.marks: dict[str, int] = {}  # layer -> number of storages saved before its forward began
        self.inputs: dict[str, int] = {}  # layer -> the storage of its input
        self.input_records: dict[str, Storage] = {}  # layer -> its input's lifetime (live.py)
        self.output_events: dict[str, int] = {}  # layer -> the event its output was made at
        # per leaf module's forward, in order: (storages saved by then, bytes of its inputs and output)
        self.working: list[tuple[int, int]] = []
        self.live = LiveBytes(self._skip)  # op-level live bytes (live.py), forward then backward
        self.forward_events = 0  # events of the forward; the backward's follow
        self.reached: dict[str, int] = {}  # layer -> events before backward produced its output's grad

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        if is_quantized(tensor):
            return tensor
        storage = tensor.untyped_storage()
        ptr = storage.data_ptr()
        self.live.saved(tensor, len(self.marks))
        if ptr not in self._skip and ptr not in self._seen and storage.nbytes():
            self._seen.add(ptr)
            self.sizes.append(storage.nbytes())
        return tensor

    def _pre_hook(self, name: str) -> Any:
        def hook(module: nn.Module, args: Any) -> None:
            self.marks.setdefault(name, len(self.sizes))
            if args and isinstance(args[0], torch.Tensor):
                self.inputs.setdefault(name, args[0].untyped_storage().data_ptr())
                record = self.live.record(args[0])
                if record is not None:
                    self.input_records.setdefault(name, record)

        return hook

    def _output_hook(self, name: str) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            self.output_events.setdefault(name, self.live.events - 1)

        return hook

    def _leaf_hook(self, module: nn.Module, args: Any, output: Any) -> None:
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if isinstance(output, torch.Tensor):
            tensors.append(output)
        self.working.append((len(self.sizes), sum(t.numel() * t.element_size() for t in tensors)))

    @contextmanager
    def recording(self) -> Iterator[SavedBytes]:
        handles = [
            self._model.get_submodule(n).register_forward_pre_hook(self._pre_hook(n)) for n in self._names
        ]
        leaves = [m for m in self._model.modules() if not any(True for _ in m.children())]
        handles += [m.register_forward_hook(self._leaf_hook) for m in leaves]
        handles += [
            self._model.get_submodule(n).register_forward_hook(self._output_hook(n)) for n in self._names
        ]
        try:
            with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor), self.live:
                yield self
        finally:
            for handle in handles:
                handle.remove()
            self.forward_events = self.live.events

    @contextmanager
    def backward(self, outputs: list[tuple[str, torch.Tensor]]) -> Iterator[SavedBytes]:
        """Record the backward (the pass's `autograd.grad`); `outputs`: (layer, recorded output).
        The gradients the pass captures it holds to its end; a step only passes them on."""

        def reach(name: str) -> Any:
            def hook(grad: torch.Tensor) -> None:
                self.live.read(grad)
                self.live.hold(grad)  # the pass captures it to its end; a step only passes it on
                self.reached.setdefault(name, self.live.events)

            return hook

        handles = [a.register_hook(reach(n)) for n, a in outputs if a.requires_grad]
        self.live.backward_from = self.live.events
        try:
            with self.live:
                yield self
        finally:
            for handle in handles:
                handle.remove()

    def op_peaks(self, name: str) -> tuple[int, int]:
        """(forward, backward) working-set peaks, op by op, of a step whose earliest trained layer
        is `name`: what it keeps from `name` on plus every transient (live.py); (0, 0) if it never ran."""
        if name not in self.marks:
            return 0, 0
        segment = list(self.marks).index(name) + 1
        storages, end = self.live.storages, self.reached.get(name, self.live.events)
        forward = peak_from(storages, segment, 0, self.forward_events)
        return forward, peak_from(storages, segment, self.forward_events, end)

    def forward_steps(self, name: str) -> tuple[tuple[str, int, int, int, int], ...]:
        """Per target layer `n`, for a step whose earliest trained layer is `name`: (n, the event
        the step's replay stops holding n's input at, the forward's peak from then on, the event n's
        output is made at, the peak from then on). A trained layer keeps its input and its rows'
        product to backward, from those events on: the cost model adds each to the peak that
        follows it, not to the whole forward's (live.py's replay holds them until then)."""
        if name not in self.marks:
            return ()
        segment = list(self.marks).index(name) + 1
        stop = self.forward_events
        names = [n for n in self.input_records if n in self.output_events]
        ends = [min(step_end(self.input_records[n], segment, stop), stop) for n in names]
        outs = [self.output_events[n] for n in names]
        peaks = suffix_peaks(self.live.storages, segment, stop, ends + outs)
        return tuple((n, ends[i], peaks[i], outs[i], peaks[len(names) + i]) for i, n in enumerate(names))

    def after(self, name: str) -> tuple[int, int]:
        """(bytes saved from `name`'s forward on, the largest of those storages); (0, 0) if it never ran."""
        if name not in self.marks:
            return 0, 0
        tail = self.sizes[self.marks[name] :]
        return sum(tail), max(tail, default=0)

    def forward_peak(self, name: str) -> int:
        """The forward's largest working set once `name` trains: at each leaf module's forward, what
        was saved from `name`'s forward on plus that module's inputs and output (transient)."""
        start = self.marks.get(name)
        prefix = [0]
        for size in self.sizes:
            prefix.append(prefix[-1] + size)
        peak = 0
        for count, working in self.working:
            saved = prefix[count] - prefix[start] if start is not None and count > start else 0
            peak = max(peak, saved + working)
        return peak

    def input_groups(self) -> dict[str, int]:
        """Per layer that ran, an id shared by the layers that read the same input tensor."""
        first: dict[int, int] = {}
        return {n: first.setdefault(ptr, i) for i, (n, ptr) in enumerate(self.inputs.items())}
