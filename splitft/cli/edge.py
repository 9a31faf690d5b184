"""`splitft edge serve|health`: the edge gRPC server and its health probe (parsers only)."""

from __future__ import annotations

import argparse
import os

from splitft.cli.args import byte_size, device_memory, handled_by
from splitft.model.choices import DEVICE_MAPS, DTYPE_NAMES
from splitft.model.schemes import QUANTIZE_SCHEMES

# How long a forward waits for other sessions to join its trunk pass (EdgeConfig has the same default).
DEFAULT_BATCH_WINDOW_MS = 20.0

LIMIT_FLAGS = {  # edge serve flag -> what it bounds; defaults in edge_server/limits.py, README "Security"
    "max_request_bytes": "bytes of all tensors of one request",
    "max_sequence_length": "tokens per row of a forward",
    "max_batch_tokens": "batch x tokens of a forward",
    "max_adapter_parameters": "trainable trunk parameters per session",
    "max_sessions_per_device": "open sessions of one device",
    "max_calls_per_device": "concurrent calls (open streams included) of one device",
    "max_cache_tokens": "rows x tokens of one session's generate() key/value cache",
}


def register(commands: argparse._SubParsersAction) -> None:
    """Add `edge serve` and `edge health` to the top-level `commands`."""
    edge = commands.add_parser("edge", help="the edge gRPC server").add_subparsers(
        dest="edge_command", required=True
    )
    _register_serve(edge)
    _register_health(edge)


def _register_serve(edge: argparse._SubParsersAction) -> None:
    serve = edge.add_parser("serve", help="serve the frozen trunk of one or more models")
    serve.add_argument(
        "--model-dir",
        action="append",
        required=True,
        metavar="[NAME=]DIR",
        help="local Hugging Face model directory; repeat for several models",
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=50051)
    serve.add_argument(
        "--certs", default=None, metavar="DIR", help="mutual TLS with DIR/ca.pem, edge.pem, edge.key"
    )
    serve.add_argument(
        "--insecure",
        action="store_true",
        help="plaintext gRPC (and a plaintext http:// control plane on another host): local experiments only",
    )
    serve.add_argument(
        "--token-issuer-key",
        action="append",
        metavar="PEM",
        help="trust session tokens signed by this Ed25519 public key; repeat for several",
    )
    serve.add_argument("--edge-id", default="", help="this edge's id, matched against a token's edge claim")
    _add_control_plane_flags(serve)
    serve.add_argument(
        "--session-ttl", type=float, default=600.0, help="seconds before an idle session is dropped"
    )
    serve.add_argument("--max-sessions", type=int, default=64)
    serve.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    serve.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="PORT",
        help="serve Prometheus /metrics over plain HTTP on --host:PORT (default: off; 9400 in the images)",
    )
    serve.add_argument(
        "--no-tokens",
        action="store_true",
        help="with --certs and no token issuer: serve without session tokens on purpose (logs a warning)",
    )
    _add_batching_flags(serve)
    _add_placement_flags(serve)
    serve.add_argument(
        "--quantize",
        choices=QUANTIZE_SCHEMES,
        default="none",
        help="store the trunk's frozen linear weights in int8 (torchao) or nf4 (bitsandbytes); "
        "sessions still train LoRA on them (default: none)",
    )
    _add_limit_flags(serve)
    handled_by(serve, "edge:serve")


def _add_control_plane_flags(serve: argparse.ArgumentParser) -> None:
    serve.add_argument(
        "--control-plane",
        default=None,
        metavar="URL",
        help="register and heartbeat here; https:// (http:// only to loopback, or with --insecure)",
    )
    serve.add_argument(
        "--control-plane-ca",
        default=None,
        metavar="PEM",
        help="CA that verifies the control plane's HTTPS (default: DIR/ca.pem of --certs, else the system's)",
    )
    serve.add_argument(
        "--edge-secret",
        default=os.environ.get("SPLITFT_EDGE_SECRET"),
        help="enrollment secret for --control-plane (default: $SPLITFT_EDGE_SECRET)",
    )
    serve.add_argument("--edge-name", default=None, help="name to register under (default: host name)")
    serve.add_argument(
        "--edge-credential-file",
        default=os.environ.get("SPLITFT_EDGE_CREDENTIAL_FILE"),
        metavar="PATH",
        help="keep this edge's control-plane credential here (0600), so a restart can register its "
        "name again: the shared secret only registers new names (default: $SPLITFT_EDGE_CREDENTIAL_FILE)",
    )
    serve.add_argument(
        "--advertise-address",
        default=None,
        metavar="HOST:PORT",
        help="address devices dial (default: --host:--port)",
    )


def _add_batching_flags(serve: argparse.ArgumentParser) -> None:
    serve.add_argument(
        "--batching",
        choices=("on", "off"),
        default="on",
        help="run concurrent forwards (and backwards) of different sessions as one trunk pass (default: on)",
    )
    serve.add_argument(
        "--batch-window-ms",
        type=float,
        default=DEFAULT_BATCH_WINDOW_MS,
        metavar="MS",
        help="how long a forward waits for other sessions' forwards to join its pass "
        f"(default: {DEFAULT_BATCH_WINDOW_MS:g}; a session alone on its model never waits)",
    )


def _add_placement_flags(serve: argparse.ArgumentParser) -> None:
    serve.add_argument(
        "--device",
        default="auto",
        help="where the trunk computes: auto (CUDA when a GPU is visible, else cpu), cpu, cuda, cuda:N "
        "(default: auto)",
    )
    serve.add_argument(
        "--dtype",
        choices=DTYPE_NAMES,
        default="float32",
        help="the trunk's weights and activations (default: float32); activations cross the wire in "
        "the session's codec whatever this is",
    )
    serve.add_argument(
        "--device-map",
        choices=DEVICE_MAPS,
        default=None,
        help="spread the trunk's blocks over every visible GPU with accelerate (auto: fill in order; "
        "balanced: even shares); refused when it would need CPU or disk offload",
    )
    serve.add_argument(
        "--max-memory",
        type=device_memory,
        default=None,
        metavar="DEV=BYTES,...",
        help="memory --device-map may use per device, e.g. 0=70G,1=70G (default: what is free)",
    )


def _add_limit_flags(serve: argparse.ArgumentParser) -> None:
    for name, what in LIMIT_FLAGS.items():
        flag = "--" + name.replace("_", "-")
        serve.add_argument(flag, type=int, default=None, help=f"at most this many {what}")
    serve.add_argument(
        "--memory-limit",
        type=byte_size,
        default=None,
        metavar="BYTES",
        help="edge memory all sessions may hold together (adapters, optimizer state, kept graphs), e.g. "
        "8G; a session or forward beyond it gets RESOURCE_EXHAUSTED (default: half the memory available "
        "at start, on the trunk's GPU or the host)",
    )


def _register_health(edge: argparse._SubParsersAction) -> None:
    health = edge.add_parser("health", help="check an edge with the gRPC health service (exit 0 if SERVING)")
    health.add_argument("--address", default="127.0.0.1:50051", metavar="HOST:PORT")
    health.add_argument("--certs", default=None, metavar="DIR", help="mutual TLS with the CA DIR/ca.pem")
    health.add_argument("--cert", default=None, help="default: DIR/devices/healthcheck.pem")
    health.add_argument("--key", default=None, help="default: DIR/devices/healthcheck.key")
    health.add_argument("--insecure", action="store_true", help="plaintext, for an edge run with --insecure")
    health.add_argument("--server-name", default=None, help="name to verify in the edge certificate")
    health.add_argument("--service", default="", help="service to check (default: the whole server)")
    health.add_argument("--timeout", type=float, default=5.0, help="seconds")
    handled_by(health, "health:check")
