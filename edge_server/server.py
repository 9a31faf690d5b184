"""The edge gRPC server: build it, bind it, serve until SIGTERM, stop gracefully."""

from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from edge_server.admission import MemoryAccountant
from edge_server.auth import TokenInterceptor
from edge_server.batching import TrunkBatcher
from edge_server.idle_threads import IdleThreadsInterceptor
from edge_server.limits import DataPlaneLimits, DeviceCallCounter
from edge_server.memory import build_accountant
from edge_server.metrics import EdgeMetrics
from edge_server.registry import ModelRegistry
from edge_server.servicer import DataPlaneServicer, add_to_server
from edge_server.sessions import SessionManager
from splitft.errors import InvalidArgument, NotFound
from splitft.model.placement import Placement, claim_cuda_autograd, release_cuda_autograd
from splitft.model.schemes import QUANTIZE_SCHEMES
from splitft.security.certs import CertPaths
from splitft.security.tokens import load_public_key
from splitft.threads import release_idle_threads
from splitft.v1 import dataplane_pb2
from splitft.wire.codec import DEFAULT_MAX_TENSOR_BYTES, MESSAGE_LIMIT_BYTES

logger = logging.getLogger(__name__)
SERVICE_NAME = dataplane_pb2.DESCRIPTOR.services_by_name["DataPlane"].full_name


@dataclass
class EdgeConfig:
    """How an edge server runs."""

    model_dirs: list[str]  # DIR or NAME=DIR, one per served model
    host: str = "127.0.0.1"
    port: int = 50051  # 0 picks a free port
    insecure: bool = False  # plaintext gRPC; for local experiments only
    certs_dir: str | None = None  # ca.pem, edge.pem, edge.key from `splitft certs init`: mutual TLS
    token_issuer_keys: list[str] = field(default_factory=list)  # Ed25519 public keys (PEM paths)
    token_issuer_pems: list[bytes] = field(default_factory=list)  # the same, as PEM bytes (control plane)
    edge_id: str = ""  # this edge's id, checked against a token's edge claim when it has one
    session_ttl: float = 600.0  # seconds an idle session lives
    max_sessions: int = 64
    max_workers: int = 16  # gRPC handler threads for calls, on top of one per open session stream
    max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES
    grace_seconds: float = 10.0  # how long SIGTERM waits for in-flight calls
    metrics_port: int | None = None  # Prometheus /metrics over plain HTTP on host:port; None: off, 0: any
    no_tokens: bool = False  # --no-tokens: serve mTLS without session tokens, on purpose (logged)
    limits: DataPlaneLimits = field(default_factory=DataPlaneLimits)  # per request/session/device bounds
    memory_limit: int | None = None  # --memory-limit: bytes all sessions may hold; None: half the available
    batching: bool = True  # --batching: concurrent sessions' forwards and backwards share trunk passes
    batch_window_ms: float = 20.0  # --batch-window-ms: how long a pass waits for other sessions to join
    placement: Placement = field(default_factory=Placement)  # --device, --dtype, --device-map
    quantize: str = "none"  # --quantize: the trunk's frozen linear weights (splitft.model.quantize)

    def __post_init__(self) -> None:
        if self.insecure and self.certs_dir:
            raise InvalidArgument("choose either --certs (mutual TLS) or --insecure, not both")
        if not self.insecure and not self.certs_dir:
            raise InvalidArgument(
                "refusing to serve without TLS: pass --certs DIR (from `splitft certs init`) for mutual TLS, "
                "or --insecure for a local experiment"
            )
        if not self.model_dirs:
            raise InvalidArgument("give at least one --model-dir")
        if not 0 <= self.port <= 65535:
            raise InvalidArgument(f"port must be in [0, 65535], got {self.port}")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise InvalidArgument(f"metrics port must be in [0, 65535], got {self.metrics_port}")
        if self.session_ttl <= 0:
            raise InvalidArgument("session TTL must be positive")
        if self.memory_limit is not None and self.memory_limit < 1:
            raise InvalidArgument(
                f"--memory-limit must be a positive number of bytes, got {self.memory_limit}"
            )
        if self.quantize not in QUANTIZE_SCHEMES:
            known = ", ".join(QUANTIZE_SCHEMES)
            raise InvalidArgument(f"--quantize must be one of {known}, got {self.quantize!r}")
        if not 0 <= self.batch_window_ms <= 1000:
            raise InvalidArgument(f"--batch-window-ms must be in [0, 1000], got {self.batch_window_ms:g}")


def server_credentials(certs_dir: str | Path) -> grpc.ServerCredentials:
    """Mutual TLS: the edge's certificate, and client certificates required and checked against the CA."""
    paths = CertPaths(Path(certs_dir))
    for path in (paths.ca_cert, paths.edge_cert, paths.edge_key):
        if not path.is_file():
            raise NotFound(f"{path} is missing: run `splitft certs init --dir {certs_dir} --host ...`")
    pair = (paths.edge_key.read_bytes(), paths.edge_cert.read_bytes())
    return grpc.ssl_server_credentials(
        [pair], root_certificates=paths.ca_cert.read_bytes(), require_client_auth=True
    )


# Threads and gRPC slots kept beyond the DataPlane's own bound, so health checks are answered
# even when every DataPlane slot is taken.
HEALTH_HEADROOM = 4
MIN_CLIENT_PING_INTERVAL_MS = 10_000  # keepalive pings accepted this often (a device pings every 30 s)


def _issuers(config: EdgeConfig) -> list:
    """The trusted token issuers; refuses a TLS edge without any unless --no-tokens says so."""
    sources: list[str | bytes] = [*config.token_issuer_keys, *config.token_issuer_pems]
    if sources:
        issuers = [load_public_key(source) for source in sources]
        logger.info("edge requires session tokens from %d trusted issuer(s)", len(issuers))
        return issuers
    if config.certs_dir and not config.no_tokens:
        raise InvalidArgument(
            "refusing to serve --certs without session tokens: any device certificate could then use "
            "any session; pass --token-issuer-key PEM (or --control-plane URL), or --no-tokens to "
            "accept that on purpose"
        )
    if config.certs_dir:
        logger.warning(
            "edge serves WITHOUT session tokens (--no-tokens): any holder of a client certificate from "
            "the CA may open, train, export or close any session it can name"
        )
    return []


def _interceptors(config: EdgeConfig) -> list[grpc.ServerInterceptor]:
    calls = DeviceCallCounter(config.limits.max_calls_per_device)
    return [
        TokenInterceptor(_issuers(config), calls=calls, max_calls=config.max_workers + config.max_sessions),
        IdleThreadsInterceptor(),
    ]


class EdgeServer:
    """A running edge: registry, sessions, gRPC server and health service."""

    def __init__(
        self,
        config: EdgeConfig,
        registry: ModelRegistry | None = None,
        memory: MemoryAccountant | None = None,
    ) -> None:
        """`memory`: the session memory accountant, when the caller built it already (to report the
        edge's capacity at registration); by default measured here (`edge_server.memory`)."""
        self.config = config
        self.registry = registry or ModelRegistry.from_dirs(
            config.model_dirs, config.placement.resolve(), config.quantize
        )
        self.memory = memory or build_accountant(self.registry, config.memory_limit)
        self.sessions = SessionManager(
            self.registry,
            ttl_seconds=config.session_ttl,
            max_sessions=config.max_sessions,
            limits=config.limits,
            batcher=TrunkBatcher(config.batch_window_ms / 1000) if config.batching else None,
            memory=self.memory,
        )
        logger.info(
            "cross-session batching %s",
            f"on (window {config.batch_window_ms:g} ms)" if config.batching else "off",
        )
        self.health = health.HealthServicer()
        options = [
            ("grpc.max_send_message_length", MESSAGE_LIMIT_BYTES),
            ("grpc.max_receive_message_length", MESSAGE_LIMIT_BYTES),
            # Devices ping while their calls are open (device_client.connection.KEEPALIVE_S) to find
            # a silently dead link; gRPC's server default counts pings closer than 5 min as abuse.
            ("grpc.http2.min_ping_interval_without_data_ms", MIN_CLIENT_PING_INTERVAL_MS),
            ("grpc.so_reuseport", 0),  # gRPC's default lets 2 edges share a port (see _bind)
        ]
        interceptors = _interceptors(config)
        # A session's Train stream holds a handler thread while it is open, so every session may keep
        # one and calls still have max_workers (the pool starts threads only as they are needed).
        # DataPlane calls beyond that get RESOURCE_EXHAUSTED from the interceptor (and beyond
        # --max-calls-per-device for one device); the headroom keeps health checks answered.
        slots = config.max_workers + config.max_sessions + HEALTH_HEADROOM
        executor = futures.ThreadPoolExecutor(max_workers=slots)
        self.server = grpc.server(
            executor, options=options, interceptors=interceptors, maximum_concurrent_rpcs=slots
        )
        self.metrics = EdgeMetrics(self.registry, self.sessions)
        self.metrics_port: int | None = None  # bound when started, if config.metrics_port is set
        servicer = DataPlaneServicer(
            self.sessions,
            max_tensor_bytes=config.max_tensor_bytes,
            edge_id=config.edge_id,
            metrics=self.metrics,
        )
        add_to_server(servicer, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.port = self._bind(f"{config.host}:{config.port}")
        if self.port == 0:
            raise InvalidArgument(f"cannot bind {config.host}:{config.port} (in use, or not an address here)")
        self._stopped = threading.Event()
        spans = (served.span for served in self.registry.models.values())
        self._cuda_devices = sorted({str(s.device) for s in spans if s.device.type == "cuda"})  # CUDA-only

    def _bind(self, address: str) -> int:
        """The bound port, 0 where `address` cannot be bound. With SO_REUSEPORT (gRPC's default on
        Linux, turned off in the options) a second edge could bind this edge's port and the kernel
        would split new connections between the two: an edge owns its port or fails to start."""
        try:
            if self.config.certs_dir:
                logger.info("edge serves mutual TLS with certificates from %s", self.config.certs_dir)
                return int(self.server.add_secure_port(address, server_credentials(self.config.certs_dir)))
            logger.warning(
                "edge serves PLAINTEXT gRPC (--insecure): activations and adapters are readable "
                "by anyone on the network; use only for local experiments"
            )
            return int(self.server.add_insecure_port(address))
        except RuntimeError:  # grpcio raises where older releases returned 0
            return 0

    @property
    def address(self) -> str:
        """host:port the edge listens on (the bound port once started on port 0)."""
        return f"{self.config.host}:{self.port}"

    def start(self) -> EdgeServer:
        """Serve: gRPC, the session reaper, the metrics endpoint if asked, and health SERVING."""
        for device in self._cuda_devices:
            claim_cuda_autograd("edge", device)
        self.server.start()
        self.sessions.start_reaper()
        if self.config.metrics_port is not None:
            self.metrics_port = self.metrics.serve(self.config.host, self.config.metrics_port)
        for service in ("", SERVICE_NAME):
            self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        # Loading and the memory profile's forwards ran in this thread, which now only waits: its
        # OpenMP team would otherwise put the threads that compute into libgomp's throttled wait.
        release_idle_threads()
        logger.info("edge listening on %s serving %s", self.address, sorted(self.registry.models))
        return self

    def stop(self, grace: float | None = None) -> None:
        """Stop once: health NOT_SERVING, drain calls for the grace period, release sessions, stop metrics."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.health.enter_graceful_shutdown()
        self.server.stop(self.config.grace_seconds if grace is None else grace).wait()
        self.sessions.stop()
        self.metrics.stop()
        for device in self._cuda_devices:
            release_cuda_autograd("edge", device)
        logger.info("edge stopped")

    def wait(self) -> None:
        """Block until the gRPC server has terminated."""
        self.server.wait_for_termination()

    def serve_forever(self) -> None:
        """Serve until SIGTERM or SIGINT, then drain in-flight calls and stop."""

        stopping: list[threading.Thread] = []

        def _on_signal(signum: int, _frame: object) -> None:
            logger.info("signal %d: shutting down gracefully", signum)
            # stop() blocks while in-flight calls drain; a signal handler must not, so a thread does it.
            thread = threading.Thread(target=self.stop, daemon=True)
            stopping.append(thread)
            thread.start()

        signal.signal(signal.SIGTERM, _on_signal)
        signal.signal(signal.SIGINT, _on_signal)
        self.start()
        self.wait()
        for thread in stopping:  # let the stop finish (sessions released, "edge stopped" logged)
            thread.join(timeout=self.config.grace_seconds + 5)
