"""Memory admission on the edge: sessions reserve their estimated memory before they are built, and
their kept graphs are counted while they run, against one limit (`--memory-limit`).

A session's footprint is its state (adapter, gradients, optimizer slots, a selection's indices) plus
the larger of its reservation for kept graphs (one batch of its expected shape) and the graphs it
keeps now. The edge's used memory is the sum of the footprints; free is the limit minus that.
Everything is checked and changed under one lock, and `SessionManager` reserves a session's
memory under its own lock together with its slot, so concurrent opens cannot overshoot.

A session reaches its accountant through its `SessionMemory` (`TrunkSession.memory`): a forward
is checked before it runs and counted when its graph is kept, a backward or a dropped forward
gives its graph back, the optimizer and a selection settle the state, and release forgets it all.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from splitft.errors import ResourceExhausted
from splitft.memory.estimate import (
    MemoryProfile,
    SessionEstimate,
    TrunkAdapter,
    default_session,
    estimate_session,
    graph_bytes,
    optimizer_slots,
)
from splitft.memory.units import format_bytes

logger = logging.getLogger(__name__)
SHARED_ENTRY_PREFIX = "shared-adapter/"  # shared trunk adapters' entries: no session id holds a "/"
INDEX_BYTES = 8  # a selection's int64 index per entry (entries layout) or per row (rows layout)


@dataclass
class _Usage:
    state: int  # adapter, gradients, optimizer slots, selection indices
    graph_reserved: int  # kept graphs of one batch of the expected shape
    kept: dict[int, int] = field(default_factory=dict)  # forward id -> bytes of its kept graph
    kept_total: int = 0

    def footprint(self, kept_total: int | None = None) -> int:
        kept = self.kept_total if kept_total is None else kept_total
        return self.state + max(self.graph_reserved, kept)


class MemoryAccountant:
    """The edge's session memory: reservations at admission, kept graphs while running, one limit."""

    def __init__(self, limit: int, profiles: Mapping[str, MemoryProfile]) -> None:
        self.limit = limit
        self.profiles = dict(profiles)
        self._usage: dict[str, _Usage] = {}
        self._lock = threading.Lock()

    def used(self) -> int:
        """Bytes the sessions hold or have reserved."""
        with self._lock:
            return self._used()

    def free(self) -> int:
        """Bytes still free under the limit (0 when over it)."""
        with self._lock:
            return max(0, self.limit - self._used())

    def _used(self) -> int:
        return sum(u.footprint() for u in self._usage.values())

    def _refuse(self, what: str, need: int, parts: str = "") -> ResourceExhausted:
        free = max(0, self.limit - self._used())
        return ResourceExhausted(
            f"edge memory exhausted: {what} needs {format_bytes(need)}{f' ({parts})' if parts else ''}; "
            f"{format_bytes(free)} of {format_bytes(self.limit)} is free (--memory-limit; in use by "
            f"{self._holders()})"
        )

    def _holders(self) -> str:
        shared = sum(1 for name in self._usage if name.startswith(SHARED_ENTRY_PREFIX))
        held = f"{len(self._usage) - shared} sessions"
        return held + (f" and {shared} shared trunk adapters" if shared else "")

    def estimate(
        self,
        model: str,
        blocks: int,
        adapter: TrunkAdapter,
        batch_size: int = 0,
        sequence_length: int = 0,
        *,
        joins_shared: bool = False,
    ) -> SessionEstimate | None:
        """A new session's memory on `model` (None for a model without a profile: not counted);
        `joins_shared`: it joins an existing shared trunk adapter (its gradients only)."""
        profile = self.profiles.get(model)
        if profile is None:
            return None
        return estimate_session(
            profile,
            blocks=blocks,
            adapter=adapter,
            batch_size=batch_size,
            sequence_length=sequence_length,
            joins_shared=joins_shared,
        )

    def link(self, session_id: str, model: str, blocks: int, adapter: TrunkAdapter) -> SessionMemory:
        """The admitted session's link to this accountant."""
        return SessionMemory(self, session_id, self.profiles.get(model), blocks=blocks, adapter=adapter)

    def admit(self, session_id: str, estimate: SessionEstimate) -> None:
        """Reserve a new session's estimated memory; ResourceExhausted (needed, free) if it does not fit."""
        with self._lock:
            if estimate.total > self.limit - self._used():
                raise self._refuse("this session", estimate.total, estimate.describe())
            self._usage[session_id] = _Usage(estimate.state_bytes, estimate.graph_bytes)

    def forget(self, session_id: str) -> None:
        """Give back everything the session holds (it closed, or it failed to open)."""
        with self._lock:
            self._usage.pop(session_id, None)

    def set_state(
        self,
        session_id: str,
        state: int,
        *,
        what: str,
        graph_reserved: int | None = None,
        create: bool = False,
    ) -> None:
        """The session's state is now `state` bytes (and its graph reservation `graph_reserved`, when
        given); ResourceExhausted if growing to them does not fit, and then nothing changes.
        `create`: an entry that is not there yet starts empty (a shared trunk adapter's)."""
        with self._lock:
            usage = self._usage.get(session_id)
            if usage is None and create:
                usage = _Usage(0, 0)
                if state > self.limit - self._used():
                    raise self._refuse(what, state)
                self._usage[session_id] = usage
            if usage is None:
                return
            reserved = usage.graph_reserved if graph_reserved is None else graph_reserved
            grow = state + max(reserved, usage.kept_total) - usage.footprint()
            if grow > 0 and grow > self.limit - self._used():
                raise self._refuse(what, grow)
            usage.state, usage.graph_reserved = state, reserved

    def check_kept(self, session_id: str, size: int, *, what: str) -> None:
        """ResourceExhausted if keeping `size` more bytes of graphs would not fit (nothing changes)."""
        with self._lock:
            usage = self._usage.get(session_id)
            if usage is not None:
                grow = usage.footprint(usage.kept_total + size) - usage.footprint()
                if grow > self.limit - self._used():
                    raise self._refuse(what, grow)

    def keep(self, session_id: str, forward_id: int, size: int, *, what: str) -> None:
        """Count forward `forward_id`'s kept graph (replacing one of the same id); ResourceExhausted
        if it does not fit."""
        with self._lock:
            usage = self._usage.get(session_id)
            if usage is None:
                return
            total = usage.kept_total - usage.kept.get(forward_id, 0) + size
            grow = usage.footprint(total) - usage.footprint()
            if grow > self.limit - self._used():
                raise self._refuse(what, grow)
            usage.kept[forward_id], usage.kept_total = size, total

    def drop(self, session_id: str, forward_id: int) -> None:
        """Forward `forward_id`'s graph is gone (backward ran, or it was dropped)."""
        with self._lock:
            usage = self._usage.get(session_id)
            if usage is not None:
                usage.kept_total -= usage.kept.pop(forward_id, 0)

    def kept_bytes(self, session_id: str) -> int:
        """Bytes of the graphs the session keeps now."""
        with self._lock:
            usage = self._usage.get(session_id)
            return usage.kept_total if usage is not None else 0

    def state_bytes(self, session_id: str) -> tuple[int, int]:
        """The session's state bytes and its graph reservation ((0, 0) when it is not counted)."""
        with self._lock:
            usage = self._usage.get(session_id)
            return (usage.state, usage.graph_reserved) if usage is not None else (0, 0)

    def capacity(self) -> dict[str, Any]:
        """What heartbeats report: the limit, free bytes, and per model how many default sessions fit."""
        free = self.free()
        models = {}
        for name, profile in sorted(self.profiles.items()):
            session = default_session(profile).total
            models[name] = {
                "session_bytes": session,
                "sessions_free": free // max(1, session),
                "profile": profile.model_dump(),
            }
        return {"memory_limit_bytes": self.limit, "memory_free_bytes": free, "models": models}


class SessionMemory:
    """One session's link to the accountant (a no-op link when the edge counts no memory)."""

    def __init__(
        self,
        accountant: MemoryAccountant | None = None,
        session_id: str = "",
        profile: MemoryProfile | None = None,
        *,
        blocks: int = 0,
        adapter: TrunkAdapter = TrunkAdapter(),
    ) -> None:
        self.accountant = accountant
        self.session_id = session_id
        self.profile = profile
        self.blocks = blocks
        self.adapter = adapter
        self.slots = optimizer_slots()  # AdamW until ConfigureOptimizer names another
        self.index_bytes = 0  # a selection's indices
        self.shared_entry: str | None = None  # the accountant's entry of a shared trunk adapter it joined

    def graph_bytes(self, shape: torch.Size | tuple[int, ...]) -> int:
        """What a training forward of input `shape` ([batch, tokens, hidden]) keeps."""
        if self.profile is None:
            return 0
        return graph_bytes(
            self.profile,
            blocks=self.blocks,
            batch=shape[0],
            tokens=shape[1],
            adapter=self.adapter,
        )

    def _what(self, shape: torch.Size | tuple[int, ...]) -> str:
        return f"a forward of {shape[0]} x {shape[1]} tokens keeping its graph for the backward"

    def check(self, shape: torch.Size | tuple[int, ...]) -> None:
        """Before a forward runs: ResourceExhausted if its graph would not fit."""
        if self.accountant is not None:
            self.accountant.check_kept(self.session_id, self.graph_bytes(shape), what=self._what(shape))

    def keep(self, forward_id: int, shape: torch.Size | tuple[int, ...]) -> None:
        """The forward's graph is kept: count it (ResourceExhausted if it does not fit)."""
        if self.accountant is not None:
            self.accountant.keep(self.session_id, forward_id, self.graph_bytes(shape), what=self._what(shape))

    def drop(self, forward_id: int) -> None:
        """The forward's graph is gone."""
        if self.accountant is not None:
            self.accountant.drop(self.session_id, forward_id)

    def settle(self, params: Iterable[torch.Tensor], name: str | None = None, hparams: Any = None) -> None:
        """The state is now `params` with the optimizer `name` (None: as before); ResourceExhausted
        if it grew past what is free (and then nothing changes)."""
        slots = optimizer_slots(name, hparams) if name is not None else self.slots
        if self.accountant is not None and self.shared_entry is not None:
            self._settle_shared(self.shared_entry, sum(p.numel() * p.element_size() for p in params), slots)
        elif self.accountant is not None:
            values = sum(p.numel() * p.element_size() for p in params)
            what = "this session's adapter with gradients and optimizer state" + (
                f" ({name})" if name else ""
            )
            self.accountant.set_state(self.session_id, values * (2 + slots) + self.index_bytes, what=what)
        self.slots = slots

    def _settle_shared(self, entry: str, values: int, slots: int) -> None:
        """A session of a shared trunk adapter holds its gradients; the adapter's values and optimizer
        slots are counted once, under `entry` (shrinking the session first: its admission reserved
        them when it built the adapter)."""
        assert self.accountant is not None
        self.accountant.set_state(self.session_id, values, what="this session's trunk adapter gradients")
        what = "the job's shared trunk adapter with its optimizer state"
        self.accountant.set_state(entry, values * (1 + slots), what=what, create=True)

    def admit_selection(self, masks: Mapping[str, torch.Tensor]) -> None:
        """Before a selection allocates its deltas: reserve them (ResourceExhausted if they do not fit).

        Per module, the entries layout keeps the values, an int64 index per entry, gradients and
        optimizer slots; the rows layout keeps [rows, in] values with the same, and an index per
        row (`splitft.methods.sparse`). A kept forward holds the targets' inputs, which the
        session's estimate already counts per token (`TrunkAdapter.selection`); no weight-sized
        tensor (the entries layout kept one per module and forward until 2026-11)."""
        if self.profile is None:
            return
        values = indices = 0
        for mask in masks.values():
            in_features = mask.shape[1]
            if torch.equal(mask.any(dim=1), mask.all(dim=1)):  # whole rows
                rows = int(mask.any(dim=1).sum())
                values, indices = values + rows * in_features, indices + rows * INDEX_BYTES
            else:
                entries = int(mask.sum())
                values, indices = values + entries, indices + entries * INDEX_BYTES
        state = values * self.profile.dtype_bytes * (2 + self.slots) + indices
        if self.accountant is not None:
            what = f"the selection ({values} trunk values with their gradients, optimizer state and indices)"
            self.accountant.set_state(self.session_id, state, what=what)
        self.index_bytes = indices

    def close(self) -> None:
        """The session is gone: give everything back."""
        if self.accountant is not None:
            self.accountant.forget(self.session_id)


def adapter_of(lora_config: Any, method: Any) -> TrunkAdapter:
    """What a session trains, for its estimate: a peft `LoraConfig`, a `TrunkMethod`, or neither."""
    if lora_config is not None:
        targets = lora_config.target_modules
        return TrunkAdapter.lora(
            lora_config.r,
            sorted(targets) if isinstance(targets, (set, list, tuple)) else None,
            lora_config.lora_dropout,
            lora_config.use_dora,
        )
    if method is not None:
        targets = getattr(method.config, "target_modules", None)
        return TrunkAdapter.selection(list(targets) if targets is not None else None)
    return TrunkAdapter()


def untracked() -> SessionMemory:
    """A link that counts nothing (a session built outside a `SessionManager`, e.g. in unit tests)."""
    return SessionMemory()
