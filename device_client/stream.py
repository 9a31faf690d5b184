"""One session's `Train` stream: forwards and backwards on one bidirectional gRPC stream.

The device submits requests from any thread and gets a future per request; one sender (gRPC's own
thread, draining a queue) and one reader thread serve them all. Several requests may be in flight
(micro-batch pipelining); the edge answers in arrival order. A request that fails on the edge fails
only its own future, with the error catalog's exception; a broken stream fails every pending
future and every later submit.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field

import grpc
import torch

from device_client.connection import EdgeConnection
from splitft.compress.encoder import TensorEncoder
from splitft.errors import SplitftError, Unavailable, error_from_code, error_from_grpc
from splitft.threads import release_idle_threads
from splitft.v1 import dataplane_pb2 as pb
from splitft.wire.codec import TensorAssembler, tensors_to_parts

logger = logging.getLogger(__name__)

_CLOSE = object()  # tells the request generator the stream is done


@dataclass
class _Pending:
    future: Future[dict[str, torch.Tensor]]
    assembler: TensorAssembler = field(default_factory=TensorAssembler)


class SessionStream:
    """The device end of a `Train` stream (see the .proto)."""

    def __init__(self, conn: EdgeConnection) -> None:
        self._conn = conn
        self._outbox: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._pending: dict[tuple[int, bool], _Pending] = {}
        self._lock = threading.Lock()  # guards _pending and _failure
        self._send_lock = threading.Lock()  # one request's messages stay together in the outbox
        self._failure: SplitftError | None = None
        self._responses = conn.open_stream("Train", self._requests())
        self._reader = threading.Thread(target=self._read, name="splitft-train-stream", daemon=True)
        self._reader.start()

    def submit(
        self,
        header: pb.ForwardHeader | pb.BackwardHeader,
        tensors: Mapping[str, torch.Tensor],
        codec: str | TensorEncoder,
    ) -> Future[dict[str, torch.Tensor]]:
        """Send one request; the future gives the answer's tensors (empty when there are none)."""
        backward = isinstance(header, pb.BackwardHeader)
        first = pb.TrainRequest(backward=header) if backward else pb.TrainRequest(forward=header)
        # Encoded outside the lock: other threads keep sending meanwhile.
        encoded = [first, *tensors_to_parts(tensors, codec, into=pb.TrainRequest)]
        encoded.append(pb.TrainRequest(end=pb.StreamEnd()))
        key = (int(header.forward_id), backward)
        future: Future[dict[str, torch.Tensor]] = Future()
        with self._lock:
            if self._failure is not None:
                raise self._failure
            if key in self._pending:
                raise SplitftError(f"request {key} is already in flight")
            self._pending[key] = _Pending(future)
        with self._send_lock:
            for message in encoded:
                self._outbox.put(message)
        return future

    def close(self) -> None:
        """End the stream (the edge keeps the session); pending requests fail with Unavailable."""
        self._outbox.put(_CLOSE)
        self._reader.join(timeout=10)
        if self._reader.is_alive():
            self._responses.cancel()
            self._reader.join(timeout=5)

    def _requests(self) -> Iterator[pb.TrainRequest]:
        while True:
            message = self._outbox.get()
            if message is _CLOSE:
                return
            assert isinstance(message, pb.TrainRequest)
            self._conn.stats.add_sent(message.ByteSize())
            yield message

    def _read(self) -> None:
        try:
            for response in self._responses:
                self._conn.stats.add_received(response.ByteSize())
                self._dispatch(response)
        except grpc.RpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.CANCELLED:
                self._fail(Unavailable("the session stream was cancelled"))
            else:
                self._fail(error_from_grpc(code, exc.details() or ""))
            return
        except SplitftError as exc:  # a malformed answer from the edge
            self._fail(Unavailable(f"the edge sent a malformed answer on the session stream: {exc}"))
            self._responses.cancel()
            return
        self._fail(Unavailable("the session stream ended"))

    def _dispatch(self, response: pb.TrainResponse) -> None:
        key = (int(response.forward_id), bool(response.backward))
        with self._lock:
            pending = self._pending.get(key)
        if pending is None:
            raise SplitftError(f"an answer for request {key}, which is not in flight")
        item = response.WhichOneof("item")
        if item == "part":
            pending.assembler.add(response.part)
            return
        with self._lock:
            del self._pending[key]
        if item == "end":
            pending.future.set_result(pending.assembler.finish())
            release_idle_threads()  # decoding (int8, lowrank...) may have started a team in this thread
        elif item == "error":
            pending.future.set_exception(error_from_code(response.error.code, response.error.message))
        else:
            pending.future.set_exception(Unavailable("the edge sent an empty TrainResponse"))

    def _fail(self, error: SplitftError) -> None:
        with self._lock:
            self._failure = self._failure or error
            pending, self._pending = self._pending, {}
        for item in pending.values():
            if not item.future.done():
                item.future.set_exception(error)
