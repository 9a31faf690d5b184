"""Start an edge server as a real subprocess on loopback and wait until it is healthy."""

from __future__ import annotations

import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from grpc_health.v1 import health_pb2, health_pb2_grpc

from splitft.errors import Unavailable
from splitft.security.certs import CertPaths, init_ca, issue_device, write_secret_files
from splitft.security.tokens import generate_issuer_key, issue_token, public_key_pem
from splitft.security.trust import tls_verify

logger = logging.getLogger(__name__)


_HANDED_OUT: set[int] = set()
_HANDED_OUT_LOCK = threading.Lock()


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, never the same one twice in this process.

    The port is free when this returns; the caller's child binds it a moment later. Between the two
    the kernel may hand the same port to the next bind(0), e.g. this function's next call while the
    first child is still starting: remembering what was handed out closes that window here (other
    processes can still race, which is why callers wait for health before using a port).
    """
    with _HANDED_OUT_LOCK:
        for _ in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((host, 0))
                port = int(sock.getsockname()[1])
            if port not in _HANDED_OUT:
                _HANDED_OUT.add(port)
                return port
    raise Unavailable("no free port found that this process has not handed out already")


def terminate(process: subprocess.Popen | None, timeout: float = 20.0) -> int | None:
    """SIGTERM (a graceful stop), then SIGKILL after `timeout`; the exit code, None if never started."""
    if process is None or process.poll() is not None:
        return None if process is None else process.returncode
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def wait_healthy(
    address: str,
    timeout: float,
    process: subprocess.Popen | None = None,
    credentials: grpc.ChannelCredentials | None = None,
) -> None:
    """Poll the standard gRPC health service until it answers SERVING."""
    deadline = time.monotonic() + timeout
    channel_ctx = grpc.secure_channel(address, credentials) if credentials else grpc.insecure_channel(address)
    with channel_ctx as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise Unavailable(
                    f"edge process exited with code {process.returncode} before becoming healthy"
                )
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise Unavailable(f"edge at {address} not healthy after {timeout:.0f} s")


class EdgeProcess:
    """`splitft edge serve` in a child process; a context manager that stops it with SIGTERM.

    Plaintext (`--insecure`) unless `tls` gives (certs dir, client cert, client key): then the edge
    serves mutual TLS from that directory and the health check presents the client certificate.
    """

    def __init__(
        self,
        model_args: Sequence[str],
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        extra_args: Sequence[str] = (),
        log_path: str | None = None,
        threads: int | None = None,
        tls: tuple[str, str, str] | None = None,
        env: Mapping[str, str] | None = None,
        metrics_port: int | None = None,
    ) -> None:
        self.host = host
        self.metrics_port = metrics_port  # Prometheus /metrics on host:metrics_port when set
        self.env = dict(env or {})  # e.g. SPLITFT_EDGE_SECRET: secrets go in the environment, not argv
        self.port = port or free_port(host)
        cmd = [
            sys.executable,
            "-m",
            "splitft.cli",
            "edge",
            "serve",
            "--host",
            host,
            "--port",
            str(self.port),
        ]
        cmd += ["--certs", tls[0]] if tls else ["--insecure"]
        self.tls = tls
        for arg in model_args:
            cmd += ["--model-dir", arg]
        if threads is not None:
            cmd += ["--threads", str(threads)]
        if metrics_port is not None:
            cmd += ["--metrics-port", str(metrics_port)]
        self.cmd = cmd + list(extra_args)
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 120.0) -> EdgeProcess:
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env)
        self.process = subprocess.Popen(self.cmd, stdout=log, stderr=log, env=env)
        try:
            wait_healthy(self.address, timeout, self.process, self._credentials())
        except BaseException:  # not healthy in time (a loaded machine): never leave it running orphaned
            terminate(self.process, 5.0)
            raise
        logger.info("edge process %d healthy at %s", self.process.pid, self.address)
        return self

    def _credentials(self) -> grpc.ChannelCredentials | None:
        if self.tls is None:
            return None
        certs, cert, key = (Path(p) for p in self.tls)
        return grpc.ssl_channel_credentials(
            (certs / "ca.pem").read_bytes(), key.read_bytes(), cert.read_bytes()
        )

    def stop(self, timeout: float = 20.0) -> int | None:
        return terminate(self.process, timeout)

    def __enter__(self) -> EdgeProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


@dataclass
class LocalPki:
    """A throw-away deployment for one machine: CA, edge and device certificates, token issuer."""

    directory: Path
    device: str
    issuer: Ed25519PrivateKey

    @classmethod
    def create(cls, directory: Path, device: str = "device") -> LocalPki:
        init_ca(directory, ["127.0.0.1", "localhost"], force=True)
        issue_device(directory, device, force=True)
        issuer = generate_issuer_key()
        write_secret_files({}, {directory / "issuer.pub": public_key_pem(issuer)}, force=True)
        return cls(directory, device, issuer)

    @property
    def issuer_pub(self) -> Path:
        return self.directory / "issuer.pub"

    @property
    def tls(self) -> tuple[str, str, str]:
        """(certs dir, client cert, client key) for EdgeProcess."""
        paths = CertPaths(self.directory)
        return str(self.directory), str(paths.device_cert(self.device)), str(paths.device_key(self.device))

    def edge_args(self) -> list[str]:
        return ["--token-issuer-key", str(self.issuer_pub)]

    def connect(self, address: str, *, session: str, model: str):
        """A device connection over mutual TLS carrying a fresh token for `session` on `model`."""
        from device_client import EdgeConnection

        paths = CertPaths(self.directory)
        token = issue_token(self.issuer, session=session, device=self.device, model=model)
        return EdgeConnection(
            address,
            ca=paths.ca_cert,
            cert=paths.device_cert(self.device),
            key=paths.device_key(self.device),
            token=token,
        )


class ControlProcess:
    """`splitft control serve` in a child process; waits for /healthz, stops with SIGTERM.

    With `tls_dir` it serves HTTPS from that directory's control.pem / control.key, and the checks
    here verify it against that directory's ca.pem.
    """

    def __init__(
        self,
        data_dir: str | Path,
        *,
        operator_key: str,
        edge_secret: str,
        host: str = "127.0.0.1",
        port: int | None = None,
        db_url: str | None = None,
        certs_dir: str | Path | None = None,
        tls_dir: str | Path | None = None,
        log_path: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.tls_dir = Path(tls_dir) if tls_dir is not None else None
        self.cmd = [
            sys.executable,
            "-m",
            "splitft.cli",
            "control",
            "serve",
            "--host",
            host,
            "--port",
            str(self.port),
            "--data-dir",
            str(data_dir),
        ]
        if db_url:
            self.cmd += ["--db", db_url]
        if certs_dir:
            self.cmd += ["--certs-dir", str(certs_dir)]
        if self.tls_dir is not None:
            self.cmd += ["--certs", str(self.tls_dir)]
        self.env = dict(
            os.environ,
            PYTHONUNBUFFERED="1",
            SPLITFT_OPERATOR_KEY=operator_key,
            SPLITFT_EDGE_SECRET=edge_secret,
            **(env or {}),
        )
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls_dir is not None else 'http'}://{self.host}:{self.port}"

    @property
    def verify(self) -> ssl.SSLContext | bool:
        """httpx's `verify` for this control plane: its deployment CA when it serves HTTPS."""
        if self.tls_dir is None:
            return True
        return tls_verify(CertPaths(self.tls_dir).ca_cert.read_bytes())

    def start(self, timeout: float = 60.0) -> ControlProcess:
        import httpx

        verify = self.verify
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(self.cmd, stdout=log, stderr=log, env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise Unavailable(f"control plane exited with code {self.process.returncode} before /healthz")
            try:
                if httpx.get(self.url + "/healthz", timeout=1.0, verify=verify).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        terminate(self.process, 5.0)  # never leave it running orphaned
        raise Unavailable(f"control plane at {self.url} not healthy after {timeout:.0f} s")

    def stop(self, timeout: float = 20.0) -> int | None:
        return terminate(self.process, timeout)

    def kill(self) -> None:
        """Die abruptly, as a crash would (for restart tests)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> ControlProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
