"""What one running control plane holds: settings, store, issuer key, metrics, scheduler thread."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from splitft.security.certs import write_secret_files
from splitft.security.tokens import generate_issuer_key, load_private_key, private_key_pem, public_key_pem
from splitft_control.settings import ControlSettings
from splitft_control.store import Store

logger = logging.getLogger(__name__)


@dataclass
class ControlMetrics:
    """The Prometheus metrics of one control plane, in a registry of its own (tests run several)."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.jobs = Gauge("splitft_jobs", "jobs by state", ["state"], registry=self.registry)
        self.latency = Histogram(
            "splitft_http_request_seconds",
            "request latency",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.placements = Counter(
            "splitft_scheduler_placements_total", "sessions placed on edges", registry=self.registry
        )
        self.edges_down = Counter(
            "splitft_scheduler_edges_down_total", "edges marked down", registry=self.registry
        )


def load_issuer(data_dir: Path) -> Ed25519PrivateKey:
    """The control plane's token signing key, created (0600) on first start."""
    path = data_dir / "issuer.key"
    if not path.is_file():
        key = generate_issuer_key()
        write_secret_files(
            {path: private_key_pem(key)}, {data_dir / "issuer.pub": public_key_pem(key)}, force=False
        )
        logger.info("created token issuer key %s", path)
    return load_private_key(path)


class ControlState:
    """What routes share in one running control plane: settings, store, issuer key, metrics, scheduler."""

    def __init__(self, settings: ControlSettings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.issuer = load_issuer(settings.data_dir)
        self.issuer_public_pem = public_key_pem(self.issuer).decode()
        self.metrics = ControlMetrics()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.started = time.monotonic()  # edges get one heartbeat timeout after this to check in

    def _edges_had_time_to_check_in(self) -> bool:
        # Heartbeats stored before this process started say nothing about the edges now: a restart
        # (or a crash) longer than the timeout would otherwise mark every edge down and re-place
        # every running session. Edges get one full timeout to reach this process first.
        return time.monotonic() - self.started >= self.settings.heartbeat_timeout

    def schedule_once(self) -> None:
        """One scheduler pass: mark silent edges down, place waiting sessions, update the gauges."""
        if self._edges_had_time_to_check_in():
            down = self.store.mark_stale_edges(timeout=timedelta(seconds=self.settings.heartbeat_timeout))
            if down:
                logger.warning("edges marked down after missed heartbeats: %s", ", ".join(down))
                self.metrics.edges_down.inc(len(down))
        self.store.close_due_rounds()  # federated rounds past their deadline go on without the late
        placed = self.store.place_waiting()
        self.metrics.placements.inc(placed)
        for state, count in self.store.job_counts().items():
            self.metrics.jobs.labels(state=state).set(count)

    def start(self) -> None:
        """Start the scheduler thread (a pass every SPLITFT_SCHEDULE_INTERVAL seconds)."""
        self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the scheduler thread, waiting up to 10 s for a pass in flight."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        """Run passes until stopped; a failed pass is logged and the next one runs."""
        while not self._stop.wait(self.settings.schedule_interval):
            try:
                self.schedule_once()
            except Exception:  # the scheduler must survive a bad row or a database hiccup
                logger.exception("scheduler pass failed")
