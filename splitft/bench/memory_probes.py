"""The instruments of the `bench memory` worker: torch's allocator peaks per phase, the activations
autograd saves, and the weights left in a file mapping."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from splitft.model.quantize import is_quantized, storage_pointers


class AllocationTracker:
    """Peak bytes held by torch's CPU allocator, per phase, from the profiler's memory events.

    The profiler reports every allocation and free on the profiled thread with the allocator's
    running total (`total_allocated`) of live bytes allocated since profiling began.
    """

    def __init__(self) -> None:
        self._profile = torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
        )
        self.totals: list[tuple[int, int]] = []  # (time ns, live bytes) after each event
        self.phases: dict[str, tuple[int, int]] = {}  # phase name -> (start ns, end ns)

    def __enter__(self) -> AllocationTracker:
        self._profile.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._profile.__exit__(None, None, None)
        from torch._C._profiler import _EventType

        results = self._profile.profiler.kineto_results if self._profile.profiler else None
        for node in _walk(results.experimental_event_tree() if results else []):
            if node.tag == _EventType.Allocation:
                self.totals.append((node.start_time_ns, int(node.extra_fields.total_allocated)))
            elif node.tag == _EventType.TorchOp and node.name.startswith("splitft::"):
                self.phases[node.name.removeprefix("splitft::")] = (node.start_time_ns, node.end_time_ns)
        self.totals.sort()

    def phase(self, name: str) -> Any:
        return torch.profiler.record_function(f"splitft::{name}")

    def peak(self, name: str) -> int:
        start, end = self.phases[name]
        inside = [total for t, total in self.totals if start <= t <= end]
        return max([self.live_at(name), *inside])

    def live_at(self, name: str) -> int:
        """Live bytes when phase `name` began."""
        before = [total for t, total in self.totals if t < self.phases[name][0]]
        return before[-1] if before else 0


def _walk(nodes: Any) -> Iterator[Any]:
    for node in nodes:
        yield node
        yield from _walk(node.children)


class SavedActivations:
    """Largest total, over the steps run inside it, of the distinct storages autograd saved for
    backward (parameters and buffers excluded: they count as weights)."""

    def __init__(self, model: nn.Module) -> None:
        tensors = [*model.parameters(), *model.buffers()]
        self._skip = {ptr for t in tensors for ptr in storage_pointers(t)}
        self._step: dict[int, int] = {}
        self.peak_bytes = 0

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        if is_quantized(tensor):  # a frozen quantized weight: counted as weights
            return tensor
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self._skip and storage.nbytes():
            self._step[storage.data_ptr()] = storage.nbytes()
        return tensor

    @contextmanager
    def step(self) -> Iterator[None]:
        self._step = {}
        with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor):
            yield
        self.peak_bytes = max(self.peak_bytes, sum(self._step.values()))


def file_mapped_bytes(tensors: list[torch.Tensor]) -> int:
    """Bytes of the distinct storages among `tensors` that are views of a mapped file (weights
    `from_pretrained` left in the safetensors mapping): resident in RSS, not torch allocations."""
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return 0
    files = []
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].startswith("/"):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            files.append((start, end))
    plain = [t for t in tensors if not is_quantized(t)]  # quantized ones were made in memory
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in plain}
    return sum(n for ptr, n in storages.items() if any(a <= ptr < b for a, b in files))
