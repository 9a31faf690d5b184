"""What the edge receives, decoded from the messages themselves: a gRPC client interceptor on the
device's connection that keeps every activation h_k and every gradient sent, and every trunk output
returned, exactly as they cross the wire (after the codec).

It plays the edge's view without changing the edge: the audit (and the tests) attack these tensors
and nothing else the device holds.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import torch
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from splitft.v1 import dataplane_pb2 as pb
from splitft.wire.codec import parts_to_tensors


def tensor_parts(message: Message) -> Iterator[pb.TensorPart]:
    """Every TensorPart nested anywhere in `message`."""
    if isinstance(message, pb.TensorPart):
        yield message
        return
    for descriptor, value in message.ListFields():
        if descriptor.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        for item in value if descriptor.is_repeated else [value]:
            yield from tensor_parts(item)


class WireTap(grpc.UnaryUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Keeps the tensors of the data plane's requests and answers, in the order they travel.

    `sent_hidden` / `sent_masks`: each forward's h_k and attention mask; `sent_grads`: each backward's
    gradient of the trunk output; `returned_hidden`: each forward's trunk output.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.sent_hidden: list[torch.Tensor] = []
        self.sent_masks: list[torch.Tensor | None] = []
        self.sent_grads: list[torch.Tensor] = []
        self.returned_hidden: list[torch.Tensor] = []

    def _keep(self, messages: list[Message], outgoing: bool) -> None:
        parts = [part for message in messages for part in tensor_parts(message)]
        if not parts:
            return
        tensors = parts_to_tensors(parts)
        with self._lock:
            if outgoing and "hidden" in tensors:
                self.sent_hidden.append(tensors["hidden"].float())
                self.sent_masks.append(tensors.get("attention_mask"))
            elif outgoing and "grad" in tensors:
                self.sent_grads.append(tensors["grad"].float())
            elif not outgoing and "hidden" in tensors:
                self.returned_hidden.append(tensors["hidden"].float())

    def _grouped(self, items: Iterator[Message], outgoing: bool) -> Iterator[Message]:
        """Pass a stream through, decoding each request (or answer) at its `end`."""
        group: list[Message] = []
        for item in items:
            group.append(item)
            which = item.WhichOneof("item") if "item" in item.DESCRIPTOR.oneofs_by_name else None
            if which in ("end", "error"):
                self._keep(group, outgoing)
                group = []
            yield item
        if group:
            self._keep(group, outgoing)

    def intercept_stream_stream(
        self, continuation: Callable[..., Any], details: grpc.ClientCallDetails, request_iterator: Any
    ) -> Any:
        call = continuation(details, self._grouped(request_iterator, True))
        return _TappedCall(call, self._grouped(call, False))

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: grpc.ClientCallDetails, request: Message
    ) -> Any:
        self._keep([request], True)
        outcome = continuation(details, request)
        if outcome.exception() is None:
            self._keep([outcome.result()], False)
        return outcome


class _TappedCall:
    """A response stream read through the tap; everything else (cancel, code, ...) is the call's."""

    def __init__(self, call: Any, items: Iterator[Message]) -> None:
        self._call = call
        self._items = items

    def __iter__(self) -> Iterator[Message]:
        return self

    def __next__(self) -> Message:
        return next(self._items)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)
