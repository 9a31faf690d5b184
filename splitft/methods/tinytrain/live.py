"""The bytes a pass holds after every tensor op, as torch's allocator counts them, and what a
training step from a given layer on would hold at the same op.

Module hooks see a module's inputs and output, not what functional code allocates in between
(attention's mask, a GELU written in Python), nor when a tensor stops being needed. A dispatch
mode sees every aten op, composite ones decomposed. Per storage an op creates it records the event
(op) that created it, its last read (a forward's storage: its last read in the forward), the event
by which it was freed (a weak reference per storage), its bytes and, when autograd saved it, its
`segment`: the number of target layers whose forward had begun then. (What a kernel allocates and
frees inside itself is not seen; on the bench's BERT a frozen forward's op-level peak equals the
allocator's to the byte.)

The Fisher pass keeps more than a training step: it saves from the FIRST target layer on and holds
every target output to its end. A training step whose earliest trained layer opened segment `m`
keeps a storage saved in a segment >= m until backward frees it (as the pass does); one the pass
alone kept (saved in an earlier segment, or held) lives from its creation to its last read; any
other lives as long as in the pass (the same Python code holds it). `peak_from` replays the events
with those lifetimes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

UNSAVED = -1


@dataclass
class Storage:
    """One storage the pass allocated: [created, freed) in events, its last read, its bytes."""

    created: int
    size: int
    last_read: int
    freed: int | None = None
    segment: int = UNSAVED
    held: bool = False  # the pass itself holds it to its end (a recorded output, a captured gradient)


def _storage(tensor: object) -> torch.UntypedStorage | None:
    """The tensor's storage, or None: a meta tensor, or a wrapper subclass (a quantized weight's
    view) that has none; such tensors are not counted."""
    if not isinstance(tensor, torch.Tensor) or tensor.is_meta:
        return None
    try:
        return tensor.untyped_storage()
    except (RuntimeError, NotImplementedError):
        return None


class LiveBytes(TorchDispatchMode):
    """Storage lifetimes, op by op (see the module docstring)."""

    def __init__(self, skip: set[int]) -> None:
        super().__init__()
        self._skip = skip  # storages live before the pass (weights, the batch): not counted
        self._live: dict[int, tuple[StorageWeakRef, Storage]] = {}  # data_ptr -> storage alive now
        self.storages: list[Storage] = []
        self.raw: list[int] = []  # per event, every live tracked byte (what the allocator holds)
        self._total = 0
        self.backward_from: int | None = None  # the event the backward began at (None: forward)

    @property
    def events(self) -> int:
        return len(self.raw)

    def _drop_freed(self) -> None:
        # before tracking new outputs: a freed storage's address may be reused at once
        for ptr in [p for p, (ref, _) in self._live.items() if ref.expired()]:
            storage = self._live.pop(ptr)[1]
            storage.freed = self.events
            self._total -= storage.size

    def saved(self, tensor: torch.Tensor, segment: int) -> None:
        """Autograd saved `tensor` once `segment` target layers had begun."""
        storage = _storage(tensor)
        entry = self._live.get(storage.data_ptr()) if storage is not None else None
        if entry is not None and entry[1].segment == UNSAVED:
            entry[1].segment = segment

    def hold(self, tensor: torch.Tensor) -> None:
        """The pass holds `tensor` to its end (a training step would not)."""
        storage = _storage(tensor)
        entry = self._live.get(storage.data_ptr()) if storage is not None else None
        if entry is not None:
            entry[1].held = True

    def record(self, tensor: torch.Tensor) -> Storage | None:
        """The live storage record of `tensor` (None: untracked: a weight, the batch)."""
        storage = _storage(tensor)
        entry = self._live.get(storage.data_ptr()) if storage is not None else None
        return entry[1] if entry is not None else None

    def read(self, tensor: torch.Tensor) -> None:
        """`tensor` is used at the coming event (an op's input, a gradient handed to a hook)."""
        storage = _storage(tensor)
        entry = self._live.get(storage.data_ptr()) if storage is not None else None
        # a backward reads a forward's storage only if autograd saved it: its lifetime is `segment`'s
        if entry is not None and (self.backward_from is None or entry[1].created >= self.backward_from):
            entry[1].last_read = self.events

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        for item in tree_flatten((args, kwargs))[0]:
            if isinstance(item, torch.Tensor):
                self.read(item)
        out = func(*args, **(kwargs or {}))
        self._drop_freed()
        for item in tree_flatten(out)[0]:
            storage = _storage(item)
            if storage is not None:
                ptr = storage.data_ptr()
                if ptr not in self._skip and ptr not in self._live and storage.nbytes():
                    record = Storage(self.events, storage.nbytes(), self.events)
                    self._live[ptr] = (StorageWeakRef(storage), record)
                    self.storages.append(record)
                    self._total += record.size
        self.raw.append(self._total)
        return out


def step_end(s: Storage, segment: int, stop: int) -> int:
    """The event a step whose earliest trained layer opened `segment` frees `s` by."""
    kept = s.segment != UNSAVED and s.segment >= segment
    end = s.freed if s.freed is not None else stop
    if not kept and (s.held or s.segment != UNSAVED):  # the pass kept it longer than a step
        end = min(end, s.last_read + 1)
    return end


def peak_at(storages: list[Storage], segment: int, start: int, stop: int) -> tuple[int, int]:
    """(the largest working set over events [start, stop) of a step that keeps only what was saved
    in segments >= `segment` (its earliest trained layer opened that segment), the event of it)."""
    if stop <= start:
        return 0, start
    delta = [0] * (stop - start + 1)
    for s in storages:
        first, last = max(s.created, start), min(step_end(s, segment, stop), stop)
        if first < last:
            delta[first - start] += s.size
            delta[last - start] -= s.size
    peak = running = 0
    at = start
    for index, change in enumerate(delta[:-1]):
        running += change
        if running > peak:
            peak, at = running, start + index
    return peak, at


def peak_from(storages: list[Storage], segment: int, start: int, stop: int) -> int:
    """`peak_at`'s bytes alone."""
    return peak_at(storages, segment, start, stop)[0]


def suffix_peaks(storages: list[Storage], segment: int, stop: int, events: list[int]) -> list[int]:
    """For each of `events`, the largest working set of that step's forward from it on."""
    delta = [0] * (stop + 1)
    for s in storages:
        first, last = s.created, min(step_end(s, segment, stop), stop)
        if first < last:
            delta[first] += s.size
            delta[last] -= s.size
    curve, running = [], 0
    for change in delta[:-1]:
        running += change
        curve.append(running)
    suffix = [0] * (stop + 1)
    for index in range(stop - 1, -1, -1):
        suffix[index] = max(curve[index], suffix[index + 1])
    return [suffix[min(max(e, 0), stop)] for e in events]
