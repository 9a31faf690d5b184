"""`splitft edge health`: one gRPC health check, the container and Kubernetes probe.

Its own module, apart from `edge serve`: a probe runs every few seconds and must not pay for
importing torch.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from splitft.errors import InvalidArgument
from splitft.security.certs import CertPaths

logger = logging.getLogger("splitft")


def check(args: argparse.Namespace) -> int:
    """One gRPC health check: 0 when SERVING, else 1."""
    options = [("grpc.ssl_target_name_override", args.server_name)] if args.server_name else []
    if args.insecure:
        channel = grpc.insecure_channel(args.address)
    else:
        channel = grpc.secure_channel(args.address, _credentials(args), options=options)
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
        except grpc.RpcError as exc:
            logger.error("edge at %s is not healthy: %s %s", args.address, exc.code().name, exc.details())
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    sys.stdout.write(f"{args.address}: {status}\n")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def _credentials(args: argparse.Namespace) -> grpc.ChannelCredentials:
    """Mutual TLS as a device: the deployment CA and a client certificate (default: devices/healthcheck)."""
    if not args.certs:
        raise InvalidArgument("give --certs DIR (mutual TLS with a client certificate) or --insecure")
    paths = CertPaths(Path(args.certs))
    cert = Path(args.cert) if args.cert else paths.device_cert("healthcheck")
    key = Path(args.key) if args.key else paths.device_key("healthcheck")
    return grpc.ssl_channel_credentials(paths.ca_cert.read_bytes(), key.read_bytes(), cert.read_bytes())
