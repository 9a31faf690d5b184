"""Exactly once: a session's window of applied request ids and their answers.

A device that lost an answer (a dropped connection, a deadline) cannot tell whether the edge applied
its request, so it sends it again with the same `RequestId.seq`. The edge applies a seq once: a
seq it remembers is answered with the stored answer, never applied a second time (no double
optimizer step, no gradient accumulated twice, no dropout mask drawn again).

What is remembered: the answers of the seqs at or above the device's latest `answered_below` (the
device has every answer below it and will not ask again), at most `REPLAY_WINDOW` of them and
`max_bytes` of stored answers; beyond either bound the lowest seq is forgotten. A seq below the
window's floor is refused with FAILED_PRECONDITION: it was answered already or forgotten, and
applying it again could double it. Seqs above the floor may arrive in any order (pipelined
micro-batches keep several forwards and backwards in flight), so the window is a set, not a
counter. A request that fails stores nothing: it applied nothing, and a retry applies it.

Transport state (the answers are the encoded protobuf messages), kept in the session's
`SessionWire`; every call runs under the session's lock, so a retry that arrives while its first
copy is still being applied waits for it and gets its answer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from edge_server.limits import DEFAULT_MAX_REQUEST_BYTES
from splitft.errors import FailedPrecondition, InvalidArgument
from splitft.v1 import dataplane_pb2 as pb

logger = logging.getLogger(__name__)

# Seqs remembered per session. A device has at most a few requests in flight (a step's pipelined
# micro-batches); an SDK client's `answered_below` keeps the window at those. The bound is for a
# client that never advances it.
REPLAY_WINDOW = 64

T = TypeVar("T")

# What a request is: its kind ("forward", "backward", "step", ...) and the forward it names (0 for
# the unary calls). A seq reused for another request is refused, not answered with a wrong answer.
What = tuple[str, int]


@dataclass
class _Stored:
    what: What
    answer: Any
    size: int


def answer_size(answer: Any) -> int:
    """Serialized bytes of a stored answer: a message, or a list of them (a tensor stream)."""
    if isinstance(answer, Sequence):
        return sum(int(message.ByteSize()) for message in answer)
    return int(answer.ByteSize())


class ReplayWindow:
    """One session's applied seqs and their answers (callers hold the session's lock)."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_REQUEST_BYTES, capacity: int = REPLAY_WINDOW) -> None:
        self.max_bytes = max_bytes
        self.capacity = capacity
        self.floor = 1  # seqs below it are answered or forgotten
        self.applied = 0  # requests with a seq applied here
        self.replayed = 0  # answered from the window instead
        self._stored: dict[int, _Stored] = {}
        self._bytes = 0

    def run(self, request_id: pb.RequestId, what: What, apply: Callable[[], T]) -> T:
        """`apply()`'s answer, applied once per `request_id.seq` (every time when it is 0)."""
        seq = int(request_id.seq)
        if seq == 0:
            return apply()
        self._release(int(request_id.answered_below), seq)
        stored = self._stored.get(seq)
        if stored is not None:
            if stored.what != what:
                raise InvalidArgument(
                    f"request {seq} was a {_name(stored.what)}, not a {_name(what)}: "
                    "a retry resends the same request with the same seq"
                )
            self.replayed += 1
            logger.info("replayed request %d (%s) from the window, not applied again", seq, _name(what))
            answer: T = stored.answer
            return answer
        if seq < self.floor:
            raise FailedPrecondition(
                f"request {seq} ({_name(what)}) is below this session's replay window, which starts "
                f"at {self.floor}: it was answered already or forgotten, and is not applied twice"
            )
        answer = apply()
        self.applied += 1
        size = answer_size(answer)
        self._stored[seq] = _Stored(what, answer, size)
        self._bytes += size
        self._evict(keep=seq)
        return answer

    def __len__(self) -> int:
        return len(self._stored)

    @property
    def stored_bytes(self) -> int:
        """Bytes of the answers remembered now."""
        return self._bytes

    def _release(self, answered_below: int, seq: int) -> None:
        """Forget the answers the device has (every seq below `answered_below`)."""
        if answered_below > seq:
            raise InvalidArgument(
                f"request {seq} says the device has the answers below {answered_below}, its own included"
            )
        if answered_below <= self.floor:
            return
        self.floor = answered_below
        for old in [s for s in self._stored if s < answered_below]:
            self._bytes -= self._stored.pop(old).size

    def _evict(self, keep: int) -> None:
        """Over a bound, forget the lowest seqs (never `keep`, the answer about to be sent)."""
        while len(self._stored) > 1 and (len(self._stored) > self.capacity or self._bytes > self.max_bytes):
            lowest = min(s for s in self._stored if s != keep)
            self._bytes -= self._stored.pop(lowest).size
            self.floor = max(self.floor, lowest + 1)
            logger.warning(
                "replay window full (%d answers, %d bytes): forgot request %d; a retry of it is refused",
                len(self._stored),
                self._bytes,
                lowest,
            )


def _name(what: What) -> str:
    kind, forward_id = what
    return f"{kind} of forward {forward_id}" if kind in ("forward", "backward") else kind
