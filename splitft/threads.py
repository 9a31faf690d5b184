"""OpenMP teams that outlive their work: end them, so that the threads that compute keep spinning.

torch runs its intra-op parallelism on OpenMP (libgomp in the Linux wheels), and each thread that
runs a parallel region gets a team of worker threads of its own, which lives as long as the thread.
libgomp counts the threads of every team, and once they outnumber the CPUs it stops spinning
between parallel regions in all of them (its throttled wait): each region then wakes its workers
from sleep, which on 2 cores made the edge's trunk compute about 10% slower (docs/benchmarks.md).
A second team appears whenever a thread other than the one that computes has run a large enough
torch op: the edge's `Step` call (the trunk optimizer) in its own gRPC handler thread, the thread
that loaded the models and measured their memory profiles, the SDK's stream reader decoding an
int8 or low-rank answer, the `Train` handlers of other sessions that computed before.

`release_idle_threads` ends the calling thread's team now (OpenMP 5.0's
`omp_pause_resource_all(omp_pause_soft)`; in libgomp it touches no other thread's team and does
nothing inside a parallel region); the thread's next parallel region starts a new one. The edge
calls it when each call's handler is done (`edge_server.idle_threads`), after each answer on a
`Train` stream, and in the thread that started the server; the SDK once a forward or backward is on
its way (the device only waits until the answer) and in its stream reader after each answer. So
only the threads computing right now hold a team. Releasing at every hand-off measured neutral for
one session on 2 cores (split over one process 1.011 with it, 1.000 without, quartiles overlapping)
and keeps the teams of idle `Train` handlers from adding up when sessions take turns on the edge.

splitft never sets `OMP_WAIT_POLICY` or `GOMP_SPINCOUNT`. Where the user set one of them (or
`KMP_BLOCKTIME`), or `SPLITFT_IDLE_THREADS=keep`, nothing is released. Where the OpenMP runtime is not
libgomp (or has no `omp_pause_resource_all`), nothing is either.
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
    """Whether splitft releases idle OpenMP teams under `environ` (default: this process's): yes
    unless `SPLITFT_IDLE_THREADS=keep` or the user set how OpenMP threads wait."""
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
    """End the calling thread's idle OpenMP team now; True if it was released (see the module
    docstring for when it is not). Cheap where the thread has no team."""
    if not releases_idle_threads(environ):
        return False
    function = _pause_function()
    if function is None:
        _pause_function.cache_clear()  # libgomp may be loaded later (torch imported after splitft)
        return False
    return function(OMP_PAUSE_SOFT) == 0
