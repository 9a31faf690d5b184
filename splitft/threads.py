"""Idle OpenMP threads at a split's hand-offs: release them instead of letting them spin.

torch runs its intra-op parallelism on OpenMP (libgomp in the Linux wheels). After each parallel
region libgomp's worker threads spin for a while (about 300,000 iterations, a few milliseconds,
unless `OMP_WAIT_POLICY` or `GOMP_SPINCOUNT` say otherwise) before they sleep. Within a burst of
compute that spin is what keeps the next region cheap. At a split's hand-off it is waste: the side
that has just sent its tensors spins on the cores that the other side, on the same machine, needs.
`OMP_WAIT_POLICY=PASSIVE` would end the waste but makes every region wake its workers, which costs
more than it saves inside a burst (measured in docs/benchmarks.md), and libgomp reads it only when
it is loaded, before an application's `import torch` is over.

So splitft releases the workers at the hand-off itself: `release_idle_threads` calls OpenMP 5.0's
`omp_pause_resource_all(omp_pause_soft)` from the thread that ran the compute. In libgomp that
ends the calling thread's worker threads now (the next parallel region starts new ones, which
costs about what waking sleeping ones does); other threads' teams are not touched, and inside a
parallel region it does nothing. The SDK calls it once a forward or backward is on its way to the
edge, the edge once it has answered one.

The user's choice wins: with `OMP_WAIT_POLICY`, `GOMP_SPINCOUNT` or `KMP_BLOCKTIME` set, or
`SPLITFT_IDLE_THREADS=keep`, nothing is released. Where the OpenMP runtime is not libgomp (or has no
`omp_pause_resource_all`), it does nothing either.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path

from splitft.errors import InvalidArgument

logger = logging.getLogger(__name__)

IDLE_THREADS_ENV = "SPLITFT_IDLE_THREADS"  # "release" (the default) or "keep"
USER_KNOBS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")  # the user chose how threads wait
OMP_PAUSE_SOFT = 1  # omp_pause_resource_t: omp_pause_soft


def releases_idle_threads(environ: Mapping[str, str] | None = None) -> bool:
    """Whether splitft releases idle OpenMP threads at hand-offs under `environ` (default: this
    process's): yes unless `SPLITFT_IDLE_THREADS=keep` or the user set how OpenMP threads wait."""
    env = os.environ if environ is None else environ
    choice = env.get(IDLE_THREADS_ENV, "release").strip().lower() or "release"
    if choice not in ("release", "keep"):
        raise InvalidArgument(f"{IDLE_THREADS_ENV} must be 'release' or 'keep', got {choice!r}")
    return choice == "release" and not any(env.get(name, "").strip() for name in USER_KNOBS)


def loaded_libgomp(maps: str | None = None) -> str | None:
    """The path of the libgomp in `maps` (default: this process's /proc/self/maps), or None."""
    if maps is None:
        try:
            maps = Path("/proc/self/maps").read_text()
        except OSError:
            return None
    for line in maps.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and Path(fields[5]).name.startswith("libgomp") and ".so" in fields[5]:
            return fields[5]
    return None


def _unavailable(kind: int) -> int:
    return -1


@lru_cache(maxsize=1)
def _pause_function() -> Callable[[int], int] | None:
    """libgomp's `omp_pause_resource_all`; `_unavailable` if it lacks one; None (not cached) while
    no libgomp is loaded."""
    path = loaded_libgomp()
    if path is None:
        return None
    try:
        function = ctypes.CDLL(path).omp_pause_resource_all  # ctypes releases the GIL during the call
    except (OSError, AttributeError):
        logger.debug("%s has no omp_pause_resource_all: idle OpenMP threads are not released", path)
        return _unavailable
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int
    return function  # type: ignore[no-any-return]


def release_idle_threads(environ: Mapping[str, str] | None = None) -> bool:
    """End the calling thread's idle OpenMP workers now, so they do not spin while this side waits;
    True if they were released (see the module docstring for when they are not)."""
    if not releases_idle_threads(environ):
        return False
    function = _pause_function()
    if function is None:
        _pause_function.cache_clear()  # libgomp may be loaded later (torch imported after splitft)
        return False
    return function(OMP_PAUSE_SOFT) == 0
