"""Leader/follower gathering: requests that arrive within a short window run as one batch.

The first request for a key becomes the leader: it waits until the batch is complete (as many
requests as are expected) or the window has passed, then runs the whole batch in its own thread
while the followers wait for their results. No scheduler thread, and a request that is alone (no
peer expected) never waits while the CPU has room.

The batches of every key run in a bounded number of `Slots` (as many as the CPU runs side by side).
A leader whose window has passed while every slot is busy keeps its batch open until a slot frees:
requests arriving meanwhile join it instead of starting passes of their own that would only share
the same cores. Batches grow with the load (continuous batching), and a slot is never left idle
while a batch is ready.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Item = TypeVar("Item")


@dataclass
class _Group(Generic[Item]):
    items: list[Item] = field(default_factory=list)
    expected: int = 1
    complete: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


class Slots:
    """At most `count` batches run at once (shared by the gatherers of one edge)."""

    def __init__(self, count: int) -> None:
        if count < 1:
            raise ValueError(f"need at least one slot, got {count}")
        self.count = count
        self.busy = 0
        self._free = threading.Condition()

    @contextmanager
    def taken(self) -> Iterator[None]:
        """Hold a slot for the block (waits until one is free)."""
        with self._free:
            while self.busy >= self.count:
                self._free.wait()
            self.busy += 1
        try:
            yield
        finally:
            with self._free:
                self.busy -= 1
                self._free.notify()


class Gather(Generic[Item]):
    """Batches of `Item`s by key, each run once by its leader with `run(items)`, in one of `slots`
    (unbounded when None)."""

    def __init__(self, window_seconds: float, slots: Slots | None = None) -> None:
        self.window = window_seconds
        self.slots = slots
        self._open: dict[Hashable, _Group[Item]] = {}
        self._lock = threading.Lock()

    def submit(self, key: Hashable, item: Item, expected: int, run: Callable[[list[Item]], None]) -> None:
        """Add `item` to the open batch for `key` (or open one); returns once its batch has run.

        `expected` is how many items make the batch complete (the caller's estimate of the peers
        that will arrive); `run` is called once per batch, in the leader's thread, with every item.
        An exception from `run` is raised in every caller of that batch.
        """
        with self._lock:
            group = self._open.get(key)
            leader = group is None
            if group is None:
                group = self._open[key] = _Group()
            group.items.append(item)
            group.expected = max(group.expected, expected)
            if len(group.items) >= group.expected:
                group.complete.set()
        if not leader:
            group.done.wait()
            if group.error is not None:
                raise group.error
            return
        if self.window > 0 and expected > 1:
            group.complete.wait(self.window)
        with self.slots.taken() if self.slots is not None else nullcontext():
            with self._lock:
                del self._open[key]  # later arrivals start the next batch
            try:
                run(group.items)
            except BaseException as exc:
                group.error = exc
                raise
            finally:
                group.done.set()


class RecentPeers:
    """Who used a key lately: how many requests a batch for that key should expect."""

    def __init__(self, horizon_seconds: float) -> None:
        self.horizon = horizon_seconds
        self._seen: dict[Hashable, dict[str, float]] = {}
        self._lock = threading.Lock()

    def arrive(self, key: Hashable, who: str) -> int:
        """Record `who` on `key` now; returns how many distinct callers used `key` within the horizon."""
        now = time.monotonic()
        with self._lock:
            seen = self._seen.setdefault(key, {})
            seen[who] = now
            for name in [n for n, t in seen.items() if now - t > self.horizon]:
                del seen[name]
            return len(seen)

    def forget(self, who: str) -> None:
        """`who` is gone (its session closed): stop expecting it anywhere."""
        with self._lock:
            for key in list(self._seen):
                self._seen[key].pop(who, None)
                if not self._seen[key]:
                    del self._seen[key]
