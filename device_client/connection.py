"""A device's channel to an edge server, with byte accounting and gRPC errors turned into Python ones."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from splitft.errors import InvalidArgument, error_from_grpc
from splitft.security.tokens import METADATA_KEY
from splitft.v1 import dataplane_pb2 as pb
from splitft.v1 import dataplane_pb2_grpc as pb_grpc
from splitft.wire.codec import MESSAGE_LIMIT_BYTES

logger = logging.getLogger(__name__)

# Keepalive pings while calls are open; edges accept them every 10 s or more (edge_server.server).
KEEPALIVE_S = 30.0


@dataclass
class WireStats:
    """Serialized bytes of every message this connection sent and received (any thread)."""

    bytes_sent: int = 0
    bytes_received: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add_sent(self, count: int) -> None:
        with self._lock:
            self.bytes_sent += count

    def add_received(self, count: int) -> None:
        with self._lock:
            self.bytes_received += count


def _channel_options(
    reconnect_backoff_s: tuple[float, float], keepalive_s: float | None, server_name: str | None
) -> list[tuple[str, Any]]:
    """The channel's gRPC options, checked (see `EdgeConnection`)."""
    first, most = reconnect_backoff_s
    if not 0 < first <= most:
        raise InvalidArgument(
            f"reconnect_backoff_s must be (first, most) with 0 < first <= most, got {reconnect_backoff_s}"
        )
    options: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", MESSAGE_LIMIT_BYTES),
        ("grpc.max_receive_message_length", MESSAGE_LIMIT_BYTES),
        ("grpc.initial_reconnect_backoff_ms", max(1, int(first * 1000))),
        ("grpc.max_reconnect_backoff_ms", max(1, int(most * 1000))),
    ]
    if keepalive_s is not None:
        if not 0 < keepalive_s:
            raise InvalidArgument(f"keepalive_s must be > 0 seconds or None, got {keepalive_s}")
        unanswered_ms = max(1, int(min(keepalive_s, 10.0) * 1000))
        options += [
            ("grpc.keepalive_time_ms", max(1, int(keepalive_s * 1000))),
            ("grpc.keepalive_timeout_ms", unanswered_ms),
            ("grpc.http2.ping_timeout_ms", unanswered_ms),  # what gRPC 1.85 acts on (default 1 min)
            ("grpc.http2.max_pings_without_data", 0),  # keep pinging through a long silence
        ]
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return options


def _read(value: str | bytes | Path | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


class EdgeConnection:
    """A channel to one edge server.

    Mutual TLS by default: `ca` is the deployment CA that signed the edge's certificate, `cert` and
    `key` this device's client certificate and key (PEM paths or bytes); `server_name` overrides the
    name checked against the edge certificate. `token` is a session token sent with every call.
    `insecure=True` gives plaintext gRPC, for local experiments only.

    `reconnect_backoff_s` (first, most) bounds how long the channel waits between attempts to
    connect again after losing the edge (gRPC's own backoff, 1 s growing to 120 s by default): a
    call made while it waits fails at once with UNAVAILABLE, so the retry policy's tries
    (`device_client.retry`) only reach an edge that came back when this is no longer than its waits.
    `keepalive_s`: while calls are open, ping the edge after this many seconds without traffic and
    drop the connection when the ping goes unanswered (at most 10 s): a link that died silently
    (no reset, e.g. a phone changing networks) fails its calls with UNAVAILABLE, and they are
    retried on a new connection, instead of waiting for their deadlines. None: no pings.
    """

    def __init__(
        self,
        address: str,
        *,
        insecure: bool = False,
        ca: str | bytes | Path | None = None,
        cert: str | bytes | Path | None = None,
        key: str | bytes | Path | None = None,
        server_name: str | None = None,
        token: str | None = None,
        timeout: float = 120.0,
        reconnect_backoff_s: tuple[float, float] = (0.2, 10.0),
        keepalive_s: float | None = KEEPALIVE_S,
        interceptors: Iterable[grpc.UnaryUnaryClientInterceptor | grpc.StreamStreamClientInterceptor] = (),
    ) -> None:
        if not address or ":" not in address:
            raise InvalidArgument(f"edge address must be HOST:PORT, got {address!r}")
        options = _channel_options(reconnect_backoff_s, keepalive_s, server_name)
        self.address = address
        self.timeout = timeout
        self.stats = WireStats()
        self.token = token
        self._metadata = ((METADATA_KEY, f"Bearer {token}"),) if token else ()
        if insecure:
            channel = grpc.insecure_channel(address, options=options)
        else:
            if ca is None:
                raise InvalidArgument(
                    "a TLS connection needs ca= (or pass insecure=True for a local experiment)"
                )
            if (cert is None) != (key is None):
                raise InvalidArgument("give both cert= and key= for a client certificate, or neither")
            creds = grpc.ssl_channel_credentials(_read(ca), _read(key), _read(cert))
            channel = grpc.secure_channel(address, creds, options=options)
        self.channel = grpc.intercept_channel(channel, *interceptors) if interceptors else channel
        self.stub = pb_grpc.DataPlaneStub(self.channel)

    def call(self, method: str, request: Any) -> Any:
        """A unary call, counting bytes and raising splitft errors."""
        self.stats.add_sent(request.ByteSize())
        try:
            response = getattr(self.stub, method)(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise error_from_grpc(exc.code(), exc.details() or "") from None
        self.stats.add_received(response.ByteSize())
        return response

    def upload(self, method: str, requests: Iterable[Any]) -> Any:
        """A request-streaming call with one response, counting bytes and raising splitft errors."""
        try:
            response = getattr(self.stub, method)(
                self._count_sent(requests), timeout=self.timeout, metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise error_from_grpc(exc.code(), exc.details() or "") from None
        self.stats.add_received(response.ByteSize())
        return response

    def stream(self, method: str, requests: Iterable[Any] | Any) -> list[Any]:
        """A response-streaming call; `requests` is an iterable for a request stream, else one message."""
        if hasattr(requests, "ByteSize"):
            self.stats.add_sent(requests.ByteSize())
            sent = requests
        else:
            sent = self._count_sent(requests)
        try:
            responses = list(getattr(self.stub, method)(sent, timeout=self.timeout, metadata=self._metadata))
        except grpc.RpcError as exc:
            raise error_from_grpc(exc.code(), exc.details() or "") from None
        self.stats.add_received(sum(r.ByteSize() for r in responses))
        return responses

    def open_stream(self, method: str, requests: Iterator[Any]) -> Any:
        """A bidirectional stream for the life of a session: no deadline (each request has its own
        wait), this connection's token; returns gRPC's response iterator, which has `cancel()`."""
        return getattr(self.stub, method)(requests, metadata=self._metadata)

    def _count_sent(self, requests: Iterable[Any]) -> Iterator[Any]:
        for request in requests:
            self.stats.add_sent(request.ByteSize())
            yield request

    def list_models(self) -> list[pb.ModelInfo]:
        return list(self.call("ListModels", pb.ListModelsRequest()).models)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until the channel connects, or raise Unavailable."""
        try:
            grpc.channel_ready_future(self.channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise error_from_grpc(grpc.StatusCode.UNAVAILABLE, f"edge {self.address} not reachable") from None

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> EdgeConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
