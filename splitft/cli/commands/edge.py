"""`splitft edge serve`: the edge gRPC server, optionally registered with a control plane."""

from __future__ import annotations

import argparse
import socket
from pathlib import Path

import torch

from edge_server import EdgeConfig, EdgeServer
from edge_server.admission import MemoryAccountant
from edge_server.control import ControlPlaneLink
from edge_server.limits import DataPlaneLimits
from edge_server.memory import build_accountant
from edge_server.registry import ModelRegistry
from splitft.cli.edge import LIMIT_FLAGS
from splitft.errors import InvalidArgument
from splitft.model.placement import Placement
from splitft.model.quantize import check_available
from splitft.security.trust import read_ca_file


def serve(args: argparse.Namespace) -> int:
    """Serve until stopped; with --control-plane, register first and heartbeat while serving."""
    if args.threads:
        torch.set_num_threads(args.threads)
    config = EdgeConfig(
        model_dirs=args.model_dir,
        host=args.host,
        port=args.port,
        insecure=args.insecure,
        certs_dir=args.certs,
        token_issuer_keys=args.token_issuer_key or [],
        edge_id=args.edge_id,
        session_ttl=args.session_ttl,
        max_sessions=args.max_sessions,
        metrics_port=args.metrics_port,
        no_tokens=args.no_tokens,
        batching=args.batching == "on",
        batch_window_ms=args.batch_window_ms,
        memory_limit=args.memory_limit,
        placement=Placement(args.device, args.dtype, args.device_map, args.max_memory),
        quantize=args.quantize,
        limits=DataPlaneLimits(
            **{name: getattr(args, name) for name in LIMIT_FLAGS if getattr(args, name) is not None}
        ),
    )
    placement = config.placement.resolve()  # before loading any model: what this machine lacks is refused
    check_available(config.quantize, placement.device)
    registry = ModelRegistry.from_dirs(config.model_dirs, placement, config.quantize)
    memory = build_accountant(registry, config.memory_limit)
    link = _register_edge(args, config, registry, memory) if args.control_plane else None
    server = EdgeServer(config, registry, memory)
    if link is not None:
        server.sessions.on_expired = link.note_expired  # a vanished device's job ends (resilience.md)
        link.start(server.sessions.count, server.sessions.revoke, capacity=memory.capacity)
    try:
        server.serve_forever()
    finally:
        if link is not None:
            link.stop()
    return 0


def _register_edge(
    args: argparse.Namespace, config: EdgeConfig, registry: ModelRegistry, memory: MemoryAccountant
) -> ControlPlaneLink:
    """Register with the control plane; trust its token issuer and take the edge id it assigns."""
    if config.port == 0:
        raise InvalidArgument("--control-plane needs a fixed --port so devices can be told the address")
    name = args.edge_name or socket.gethostname()
    address = args.advertise_address or f"{config.host}:{config.port}"
    link = ControlPlaneLink(
        args.control_plane,
        args.edge_secret or "",
        name=name,
        address=address,
        models=sorted(registry.models),
        max_sessions=config.max_sessions,
        capacity=memory.capacity(),
        ca_pem=_control_plane_ca(args),
        insecure=args.insecure,
        credential_file=args.edge_credential_file,
        session_ttl=config.session_ttl,
    )
    registration = link.register()
    config.token_issuer_pems.append(registration.issuer_public_pem)
    config.edge_id = registration.edge_id
    return link


def _control_plane_ca(args: argparse.Namespace) -> bytes | None:
    """The CA that verifies the control plane: --control-plane-ca, else the deployment CA in --certs."""
    if args.control_plane_ca:
        return read_ca_file(args.control_plane_ca).encode()
    if args.certs and (Path(args.certs) / "ca.pem").is_file():
        return read_ca_file(Path(args.certs) / "ca.pem").encode()
    return None  # the system's trust store (e.g. a public certificate on a TLS-terminating proxy)
