"""Prometheus metrics of one edge: sessions, step latency, bytes on the wire, trunk and session memory
(adapters, and the memory admission's limit and use).

The servicer calls a few thin hooks (`time_step`, `received`, `sent`, `track`); the state that
already lives elsewhere (how many sessions are open, how much memory a session's adapter holds) is
read at scrape time by a collector, so nothing here can drift from the session manager.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    import torch

    from edge_server.batching import BatchStats
    from edge_server.registry import ModelRegistry
    from edge_server.session import TrunkSession
    from edge_server.sessions import SessionManager

logger = logging.getLogger(__name__)

# Seconds; a CPU step of a small trunk is milliseconds, a big trunk on a busy accelerator seconds.
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def _parameter_bytes(parameters: Iterable[torch.Tensor]) -> int:
    """Bytes the tensors hold (their storage as allocated, whatever their dtype)."""
    return sum(p.numel() * p.element_size() for p in parameters)


class _StateCollector(Collector):
    """Gauges read from the live edge when Prometheus scrapes: sessions, trunk and adapter memory."""

    def __init__(self, metrics: EdgeMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        active = GaugeMetricFamily("splitft_edge_active_sessions", "sessions open on this edge")
        sessions = self.metrics.sessions
        active.add_metric([], sessions.count() if sessions is not None else 0)
        yield active
        trunk = GaugeMetricFamily(
            "splitft_edge_trunk_parameter_bytes",
            "bytes of the frozen trunk parameters, shared by every session",
            labels=["model"],
        )
        for model, size in sorted(self.metrics.trunk_bytes.items()):
            trunk.add_metric([model], size)
        yield trunk
        # Summed per model: session ids are capabilities (with tokens off) and unbounded label values,
        # so they never appear on the unauthenticated metrics port.
        adapters = GaugeMetricFamily(
            "splitft_edge_adapter_parameter_bytes",
            "bytes of the trainable trunk parameters (adapters) of the open sessions, per model",
            labels=["model"],
        )
        totals: dict[str, int] = {}
        for model, size in self.metrics.session_bytes():
            totals[model] = totals.get(model, 0) + size
        for model, size in sorted(totals.items()):
            adapters.add_metric([model], size)
        yield adapters
        memory = sessions.memory if sessions is not None else None
        if memory is not None:  # the admission's own figures (edge_server.admission)
            yield _single(
                GaugeMetricFamily,
                "splitft_edge_memory_limit_bytes",
                "memory all sessions may hold",
                memory.limit,
            )
            yield _single(
                GaugeMetricFamily,
                "splitft_edge_memory_used_bytes",
                "memory the sessions hold or have reserved (state, kept graphs or their reservation)",
                memory.used(),
            )
        batcher = sessions.batcher if sessions is not None else None
        if batcher is not None:
            yield from _batching_metrics(batcher.stats)


# Unlabelled batching counters: (metric name, help, BatchStats field).
_SHARED_COUNTERS = (
    ("splitft_edge_shared_passes", "trunk passes run for more than one session", "shared_passes"),
    ("splitft_edge_shared_pass_rows", "rows carried by shared trunk passes", "shared_rows"),
    (
        "splitft_edge_shared_backward_calls",
        "autograd calls through shared passes (each serves one or more sessions)",
        "shared_backwards",
    ),
    ("splitft_edge_shared_backwards", "session backwards served by shared passes", "backward_items"),
)


def _single(kind: type[GaugeMetricFamily | CounterMetricFamily], name: str, doc: str, value: float) -> Metric:
    """A metric family of one unlabelled sample."""
    family = kind(name, doc)
    family.add_metric([], value)
    return family


def _batching_metrics(stats: BatchStats) -> Iterator[Metric]:
    """Cross-session batching counters (edge_server.batching.BatchStats)."""
    forwards = CounterMetricFamily(
        "splitft_edge_trunk_forwards",
        "trunk forwards, by whether they ran in a pass shared with other sessions",
        labels=["shared"],
    )
    forwards.add_metric(["yes"], stats.shared_forwards)
    forwards.add_metric(["no"], stats.alone_forwards)
    yield forwards
    for name, doc, field in _SHARED_COUNTERS:
        yield _single(CounterMetricFamily, name, doc, getattr(stats, field))


class EdgeMetrics:
    """The edge's Prometheus registry and the hooks the servicer calls."""

    def __init__(self, models: ModelRegistry | None = None, sessions: SessionManager | None = None) -> None:
        self.registry = CollectorRegistry()  # this edge's own: several edges may share a process (tests)
        self.sessions = sessions
        self.trunk_bytes: dict[str, int] = {}
        self._model_names: dict[int, str] = {}  # id(LoadedSpan) -> model name
        self._sessions: dict[str, tuple[str, weakref.ref[TrunkSession]]] = {}
        self._lock = threading.Lock()
        self._http: WSGIServer | None = None
        if models is not None:
            for name, served in models.models.items():
                self.trunk_bytes[name] = _parameter_bytes(served.span.root.parameters())
                self._model_names[id(served.span)] = name
        self.step_seconds = Histogram(
            "splitft_edge_step_seconds",
            "time the trunk spends on one call, by phase (forward, backward, optimizer)",
            ["phase", "model"],
            buckets=STEP_BUCKETS,
            registry=self.registry,
        )
        self.received_bytes = Counter(
            "splitft_edge_received_bytes",
            "bytes of data-plane messages received, by the session's codec names (no parameters)",
            ["codec"],
            registry=self.registry,
        )
        self.sent_bytes = Counter(
            "splitft_edge_sent_bytes",
            "bytes of data-plane messages sent, by codec names (no parameters)",
            ["codec"],
            registry=self.registry,
        )
        self.registry.register(_StateCollector(self))

    def model_of(self, session: TrunkSession) -> str:
        """The name of the model the session trains on, for labels ("unknown" for a span not served here)."""
        return self._model_names.get(id(session.span), "unknown")

    @contextmanager
    def time_step(self, phase: str, session: TrunkSession) -> Iterator[None]:
        """Observe how long the block takes, labelled by phase and the session's model."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.step_seconds.labels(phase, self.model_of(session)).observe(time.perf_counter() - started)

    def received(self, label: str, size: int) -> None:
        """Count `size` bytes received, under a codec label (`SessionWire.label`, or "raw")."""
        self.received_bytes.labels(label).inc(size)

    def sent(self, label: str, size: int) -> None:
        """Count `size` bytes sent, under a codec label (`SessionWire.label`, or "raw")."""
        self.sent_bytes.labels(label).inc(size)

    def track(self, session: TrunkSession) -> None:
        """Report this session's adapter memory for as long as the session object lives."""
        with self._lock:
            self._sessions[session.session_id] = (self.model_of(session), weakref.ref(session))

    def untrack(self, session_id: str) -> None:
        """Stop reporting the session's adapter memory (it closed)."""
        with self._lock:
            self._sessions.pop(session_id, None)

    def session_bytes(self) -> list[tuple[str, int]]:
        """(model, trainable bytes) of each tracked session that still holds an adapter.

        A closed or expired session is released (no trainable parameters left) and drops out; its
        entry goes once the session object is garbage. A session without a trunk adapter has none.
        """
        rows = []
        with self._lock:
            for session_id, (model, ref) in list(self._sessions.items()):
                session = ref()
                if session is None:
                    del self._sessions[session_id]
                elif session.trainable:
                    rows.append((model, _parameter_bytes(session.trainable)))
        return rows

    def serve(self, host: str, port: int) -> int:
        """Serve GET /metrics over plain HTTP on host:port (0 picks a free port); returns the port."""
        self._http, _thread = start_http_server(port, addr=host, registry=self.registry)
        bound = int(self._http.server_port)
        logger.info("edge metrics on http://%s:%d/metrics", host, bound)
        return bound

    def stop(self) -> None:
        """Stop the /metrics HTTP server, if one was started."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
