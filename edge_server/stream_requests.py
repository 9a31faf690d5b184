"""Requests as the edge receives them: a header, authorized before anything else is buffered, then
tensor parts into a bounded assembler (unary-stream RPCs whole, `Train` requests one by one)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from edge_server.session import TrunkSession
from splitft.errors import InvalidArgument, SplitftError
from splitft.v1 import dataplane_pb2 as pb
from splitft.wire.codec import TensorAssembler

FORWARD_TENSORS = frozenset({"hidden", "attention_mask", "position_ids"})
BACKWARD_TENSORS = frozenset({"grad"})


def read_stream(
    requests: Iterable[Any],
    header_type: type,
    authorize: Callable[[Any], Any],
    assembler_for: Callable[[Any], TensorAssembler],
) -> tuple[Any, Any, dict[str, torch.Tensor], int]:
    """First message: the header, authorized (`authorize(header)` -> session) before any part is
    buffered; the rest: tensor parts. Returns (header, session, tensors, bytes received)."""
    iterator = iter(requests)
    first = next(iterator, None)
    if first is None or first.WhichOneof("item") != "header":
        raise InvalidArgument(f"stream must start with a {header_type.__name__}")
    session = authorize(first.header)
    assembler = assembler_for(first.header)
    size = first.ByteSize()
    for message in iterator:
        if message.WhichOneof("item") != "part":
            raise InvalidArgument("only tensor parts may follow the header")
        size += message.ByteSize()
        assembler.add(message.part)
    return first.header, session, assembler.finish(), size


class StreamRequest:
    """A request being received on a Train stream: its header and its tensors so far.

    A bad part does not end the stream: the error is kept, later parts are skipped, and the request
    is answered with the error at its end.
    """

    def __init__(self, kind: str, header: Any, assembler: TensorAssembler) -> None:
        self.kind = kind
        self.header = header
        self.size = 0
        self.session: TrunkSession | None = None
        self._assembler = assembler
        self._error: SplitftError | None = None

    def fail(self, error: SplitftError) -> None:
        """Answer this request with `error`; its parts are skipped, never buffered."""
        if self._error is None:
            self._error = error

    def add(self, message: pb.TrainRequest) -> None:
        """Add one tensor part (a failed request counts its bytes but skips its parts)."""
        self.size += message.ByteSize()
        if self._error is None:
            try:
                self._assembler.add(message.part)
            except SplitftError as exc:
                self._error = exc

    def finish(self) -> dict[str, torch.Tensor]:
        """The request's tensors, or the error it is answered with."""
        if self._error is not None:
            raise self._error
        return self._assembler.finish()
