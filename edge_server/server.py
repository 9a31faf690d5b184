"""The edge gRPC server: build it, bind it, serve until SIGTERM, stop gracefully."""

from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from splitft.codec import DEFAULT_MAX_TENSOR_BYTES, MESSAGE_LIMIT_BYTES
from splitft.errors import InvalidArgument
from splitft.v1 import dataplane_pb2

from edge_server.registry import ModelRegistry
from edge_server.servicer import DataPlaneServicer, add_to_server
from edge_server.sessions import SessionManager

logger = logging.getLogger(__name__)
SERVICE_NAME = dataplane_pb2.DESCRIPTOR.services_by_name["DataPlane"].full_name


@dataclass
class EdgeConfig:
    """How an edge server runs."""

    model_dirs: list[str]  # DIR or NAME=DIR, one per served model
    host: str = "127.0.0.1"
    port: int = 50051  # 0 picks a free port
    insecure: bool = False  # plaintext gRPC; for local experiments only
    session_ttl: float = 600.0  # seconds an idle session lives
    max_sessions: int = 64
    max_workers: int = 16  # gRPC handler threads
    max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES
    grace_seconds: float = 10.0  # how long SIGTERM waits for in-flight calls
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.model_dirs:
            raise InvalidArgument("give at least one --model-dir")
        if not 0 <= self.port <= 65535:
            raise InvalidArgument(f"port must be in [0, 65535], got {self.port}")
        if self.session_ttl <= 0:
            raise InvalidArgument("session TTL must be positive")


class EdgeServer:
    """A running edge: registry, sessions, gRPC server and health service."""

    def __init__(self, config: EdgeConfig, registry: ModelRegistry | None = None) -> None:
        if not config.insecure:
            raise InvalidArgument("TLS is not configured: pass --insecure for a local experiment")
        self.config = config
        self.registry = registry or ModelRegistry.from_dirs(config.model_dirs)
        self.sessions = SessionManager(
            self.registry, ttl_seconds=config.session_ttl, max_sessions=config.max_sessions
        )
        self.health = health.HealthServicer()
        options = [
            ("grpc.max_send_message_length", MESSAGE_LIMIT_BYTES),
            ("grpc.max_receive_message_length", MESSAGE_LIMIT_BYTES),
        ]
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=config.max_workers), options=options)
        add_to_server(DataPlaneServicer(self.sessions, max_tensor_bytes=config.max_tensor_bytes), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        logger.warning(
            "edge serves PLAINTEXT gRPC (--insecure): activations and adapters are readable "
            "by anyone on the network; use only for local experiments"
        )
        self.port = self.server.add_insecure_port(f"{config.host}:{config.port}")
        if self.port == 0:
            raise InvalidArgument(f"cannot bind {config.host}:{config.port}")
        self._stopped = threading.Event()

    @property
    def address(self) -> str:
        return f"{self.config.host}:{self.port}"

    def start(self) -> EdgeServer:
        self.server.start()
        self.sessions.start_reaper()
        for service in ("", SERVICE_NAME):
            self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        logger.info("edge listening on %s serving %s", self.address, sorted(self.registry.models))
        return self

    def stop(self, grace: float | None = None) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.health.enter_graceful_shutdown()
        self.server.stop(self.config.grace_seconds if grace is None else grace).wait()
        self.sessions.stop()
        logger.info("edge stopped")

    def wait(self) -> None:
        self.server.wait_for_termination()

    def serve_forever(self) -> None:
        """Serve until SIGTERM or SIGINT, then drain in-flight calls and stop."""

        def _on_signal(signum: int, _frame: object) -> None:
            logger.info("signal %d: shutting down gracefully", signum)
            threading.Thread(target=self.stop, daemon=True).start()

        signal.signal(signal.SIGTERM, _on_signal)
        signal.signal(signal.SIGINT, _on_signal)
        self.start()
        self.wait()
