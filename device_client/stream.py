"""One session's `Train` stream: forwards and backwards on one bidirectional gRPC stream.

The device submits requests from any thread and gets a future per request; one sender (gRPC's own
thread, draining a queue) and one reader thread serve them all. Several requests may be in flight
(micro-batch pipelining); the edge answers in arrival order. A request that fails on the edge fails
only its own future, with the error catalog's exception.

A broken stream (UNAVAILABLE, or a waiter that got no answer in time: `reset`) is opened again as
the `RetryPolicy` allows, and every request still waiting is sent again, in the order it was first
submitted, as the same encoded bytes with the same request id, so the edge applies each once
(`edge_server.replay`) and the encoders' state advances once. A stream that breaks while nothing
is waiting stays down until the next request. When the policy is spent, every pending future and
every later submit fails with `EdgeUnreachable`; with retries off (the default here), with the
error the stream broke with.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import grpc
import torch

from device_client.connection import EdgeConnection
from device_client.retry import Backoff, RetryPolicy
from splitft.compress.encoder import TensorEncoder
from splitft.errors import EdgeUnreachable, SplitftError, Unavailable, error_from_code, error_from_grpc
from splitft.threads import release_idle_threads
from splitft.v1 import dataplane_pb2 as pb
from splitft.wire.codec import TensorAssembler, tensors_to_parts

logger = logging.getLogger(__name__)

_CLOSE = object()  # tells a request generator its call is done


@dataclass
class _Pending:
    future: Future[dict[str, torch.Tensor]]
    messages: list[pb.TrainRequest]  # encoded once: a retry sends the same bytes
    assembler: TensorAssembler = field(default_factory=TensorAssembler)


class SessionStream:
    """The device end of a `Train` stream (see the .proto)."""

    def __init__(
        self, conn: EdgeConnection, retry: RetryPolicy | None = None, rng: random.Random | None = None
    ) -> None:
        self._conn = conn
        self._retry = retry or RetryPolicy.off()
        self._backoff = Backoff(self._retry, rng or self._retry.jitter(), "the session stream")
        self._pending: dict[tuple[int, bool], _Pending] = {}  # in submission order
        self._lock = threading.Lock()  # guards _pending, _failure, _dormant, _reset, _responses
        self._send_lock = threading.Lock()  # one request's messages stay together in the outbox
        self._failure: SplitftError | None = None
        self._closing = threading.Event()
        self._wake = threading.Event()  # a request arrived while the stream was down
        self._dormant = False
        self._reset = False  # a waiter dropped the current call: its cancellation is transient
        self._outbox: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._responses: Any = None
        self._connect()
        self._reader = threading.Thread(target=self._run, name="splitft-train-stream", daemon=True)
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
        with self._send_lock:  # not while a reconnect queues the pending requests on a new call
            with self._lock:
                if self._failure is not None:
                    raise self._failure
                if key in self._pending:
                    raise SplitftError(f"request {key} is already in flight")
                self._pending[key] = _Pending(future, encoded)
                dormant = self._dormant
            if dormant:
                self._wake.set()  # the reader opens a new call and sends it there
            else:
                for message in encoded:
                    self._outbox.put(message)
        return future

    @property
    def retrying(self) -> bool:
        """Whether a broken stream is opened again (the policy allows retries)."""
        return self._retry.enabled

    def reset(self) -> None:
        """Drop the current call as broken (a waiter got no answer in time); with retries on, the
        pending requests go again on a new one."""
        with self._lock:
            self._reset = True
            responses = self._responses
        responses.cancel()

    def close(self) -> None:
        """End the stream (the edge keeps the session); pending requests fail with Unavailable."""
        self._closing.set()
        self._wake.set()
        with self._send_lock:
            self._outbox.put(_CLOSE)
        self._reader.join(timeout=10)
        if self._reader.is_alive():
            with self._lock:
                responses = self._responses
            responses.cancel()
            self._reader.join(timeout=5)

    def _connect(self) -> Any:
        """Open a Train call and queue every pending request on it, in submission order."""
        outbox: queue.SimpleQueue[object] = queue.SimpleQueue()
        with self._send_lock:
            with self._lock:
                self._outbox.put(_CLOSE)  # the previous call's sender, if it still runs, ends
                self._outbox = outbox
                self._dormant = self._reset = False
                pending = list(self._pending.values())
            for item in pending:
                item.assembler = TensorAssembler()  # a part answer from the broken call is dropped
                for message in item.messages:
                    outbox.put(message)
            responses = self._conn.open_stream("Train", self._requests(outbox))
            with self._lock:
                self._responses = responses
        if pending:
            logger.info("session stream opened again; %d requests sent again", len(pending))
        return responses

    def _requests(self, outbox: queue.SimpleQueue[object]) -> Iterator[pb.TrainRequest]:
        while True:
            message = outbox.get()
            if message is _CLOSE:
                return
            assert isinstance(message, pb.TrainRequest)
            self._conn.stats.add_sent(message.ByteSize())
            yield message

    def _run(self) -> None:
        """The reader: serve each call's answers; after a transient break, wait and open another."""
        responses = self._responses
        while True:
            error, transient = self._read(responses)
            if self._closing.is_set():
                self._fail(error)
                return
            if not (transient and self._retry.enabled):
                self._fail(error)
                return
            try:
                wait = self._backoff.failed(error)
            except EdgeUnreachable as exc:
                self._fail(exc)
                return
            if self._closing.wait(wait) or not self._await_work():
                self._fail(Unavailable("the session stream was closed"))
                return
            responses = self._connect()

    def _await_work(self) -> bool:
        """Return at once when requests are waiting; else stay down until one is submitted (True)
        or the stream is closed (False)."""
        with self._lock:
            if self._pending:
                return True
            self._dormant = True
            self._wake.clear()
        self._wake.wait()
        self._backoff.succeeded()  # the break was idle time: the new request gets the whole budget
        return not self._closing.is_set()

    def _read(self, responses: Any) -> tuple[SplitftError, bool]:
        """Serve one call's answers until it ends; returns why it ended and whether that is transient."""
        try:
            for response in responses:
                self._conn.stats.add_received(response.ByteSize())
                self._dispatch(response)
                self._backoff.succeeded()
        except grpc.RpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.CANCELLED:
                with self._lock:
                    reset = self._reset
                return Unavailable("the session stream was cancelled"), reset
            return error_from_grpc(code, exc.details() or ""), code == grpc.StatusCode.UNAVAILABLE
        except SplitftError as exc:  # a malformed answer from the edge
            responses.cancel()
            return Unavailable(f"the edge sent a malformed answer on the session stream: {exc}"), False
        return Unavailable("the session stream ended"), True

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
