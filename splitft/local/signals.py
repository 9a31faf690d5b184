"""SIGTERM as an exception, so that a process that started children (an edge, workers) stops them.

`EdgeProcess` and the benchmarks' worker pools stop their children when their `with` block exits;
SIGTERM's default action ends the process without unwinding, leaving the children running. After
`unwind_on_sigterm()`, SIGTERM raises `Terminated` in the main thread instead: every `with` block
exits, its children are stopped, and the caller exits 143 (`splitft.cli.main` does).
"""

from __future__ import annotations

import signal


class Terminated(BaseException):
    """SIGTERM, raised where the main thread is; a BaseException like KeyboardInterrupt, so
    `except Exception` handlers let it through."""


def unwind_on_sigterm() -> None:
    """Make SIGTERM raise `Terminated` in the main thread (call it from the main thread)."""
    signal.signal(signal.SIGTERM, _raise_terminated)


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated
