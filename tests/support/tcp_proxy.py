"""A TCP relay for fault injection: real loopback sockets between a device and an edge, which a
test can cut (every connection at once, or after so many bytes towards the edge), stall (hold
what the edge sends for a while), blackhole (its open connections go silent, no reset: a link that
died without a word) or close to new connections. It relays bytes and never parses
them, so it sits in front of a mutual-TLS edge unchanged; tests pick the phase to cut at by
calling `cut()` from a hook on the edge (after it applied a request, before its answer left).
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from dataclasses import dataclass

logger = logging.getLogger(__name__)

_CHUNK = 65536


@dataclass
class ProxyStats:
    """What the proxy did: connections accepted, refused, and cut."""

    accepted: int = 0
    refused: int = 0
    cut: int = 0


class TcpProxy:
    """Relays 127.0.0.1:<port> to `upstream` ("host:port"), one thread per direction per connection."""

    def __init__(self, upstream: str) -> None:
        host, _, port = upstream.rpartition(":")
        self._upstream = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self.stats = ProxyStats()
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._refusing = False
        self._cut_after: int | None = None  # bytes towards the edge still let through before a cut
        self._stall_until = 0.0  # monotonic time before which nothing goes towards the device
        self._silent: set[socket.socket] = set()  # sockets whose bytes are dropped (blackhole)
        self._closed = False
        self._acceptor = threading.Thread(target=self._accept, name="proxy-accept", daemon=True)
        self._acceptor.start()

    def cut(self) -> None:
        """Reset every open connection now (both sockets, RST): in-flight calls break."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
            self._cut_after = None
            self._silent.clear()
            self.stats.cut += len(pairs)
        for pair in pairs:
            for sock in pair:
                _reset(sock)
        logger.info("proxy cut %d connections", len(pairs))

    def cut_after(self, up_bytes: int) -> None:
        """Cut every connection once `up_bytes` more bytes have gone towards the edge (the part of
        a chunk beyond that is never delivered): a request cut off mid-upload."""
        with self._lock:
            self._cut_after = up_bytes

    def stall(self, seconds: float) -> None:
        """Hold every byte towards the device for `seconds` from now, then deliver them in order."""
        with self._lock:
            self._stall_until = time.monotonic() + seconds

    def blackhole(self) -> None:
        """The open connections go silent: bytes either way are dropped, nobody is told (new
        connections are relayed as usual)."""
        with self._lock:
            for pair in self._pairs:
                self._silent.update(pair)
        logger.info("proxy blackholed %d connections", len(self._pairs))

    def refuse(self, refusing: bool = True) -> None:
        """Refuse new connections (accept and reset them) and, when refusing, cut the open ones:
        an edge that is gone."""
        with self._lock:
            self._refusing = refusing
        if refusing:
            self.cut()

    def close(self) -> None:
        """Stop accepting and cut everything."""
        self._closed = True
        self._listener.close()
        self.cut()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                refusing = self._refusing
                if refusing:
                    self.stats.refused += 1
            if refusing:
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self._upstream)
            except OSError:
                _reset(client)
                continue
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._pairs.append((client, upstream))
                self.stats.accepted += 1
            for source, sink, up in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pump, args=(source, sink, up), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, up: bool) -> None:
        try:
            while True:
                data = source.recv(_CHUNK)
                if not data:
                    break
                data, cut = self._let_through(data) if up else (self._after_stall(data), False)
                if source in self._silent:
                    continue
                if data:
                    sink.sendall(data)
                if cut:
                    self.cut()
                    return
        except OSError:
            pass
        for sock in (source, sink):
            _close_quietly(sock)

    def _let_through(self, data: bytes) -> tuple[bytes, bool]:
        """What of `data` reaches the edge, and whether the connections are cut after it."""
        with self._lock:
            if self._cut_after is None:
                return data, False
            if len(data) < self._cut_after:
                self._cut_after -= len(data)
                return data, False
            keep, self._cut_after = self._cut_after, None
        return data[:keep], True

    def _after_stall(self, data: bytes) -> bytes:
        with self._lock:
            wait = self._stall_until - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        return data


def _reset(sock: socket.socket) -> None:
    """Close with RST (linger 0), so the peer sees a broken connection, not an orderly end."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RD)  # wakes the pump blocked in recv; sends nothing
    except OSError:
        pass
    _close_quietly(sock)


def _close_quietly(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass
