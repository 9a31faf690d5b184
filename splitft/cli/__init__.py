"""The `splitft` command line: edge server, demo and benchmarks."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from splitft.errors import SplitftError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

logger = logging.getLogger("splitft")
T = TypeVar("T", bound="DataclassInstance")


def _configure_logging(level: str, *, model_stack: bool = True) -> None:
    from rich.console import Console
    from rich.logging import RichHandler

    # stderr: stdout carries what a command prints for its user (a benchmark's JSON, keys, ...)
    handler = RichHandler(console=Console(stderr=True), show_path=False, rich_tracebacks=False)
    logging.basicConfig(level=level.upper(), format="%(name)s: %(message)s", handlers=[handler], force=True)
    for noisy in ("httpx", "urllib3", "filelock", "alembic", "httpx2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Library chatter a CLI user cannot act on: HF loading bars and deprecation notices from deps.
    warnings.filterwarnings("ignore", category=FutureWarning)
    if not model_stack:  # e.g. a health probe: importing transformers would cost most of its time
        return
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # the control-plane install (`splitft[control]`) has no model stack
        return
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _edge_serve(args: argparse.Namespace) -> int:
    import torch

    from edge_server import EdgeConfig, EdgeServer
    from edge_server.limits import DataPlaneLimits
    from edge_server.registry import ModelRegistry

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
        limits=DataPlaneLimits(
            **{name: getattr(args, name) for name in _LIMIT_FLAGS if getattr(args, name) is not None}
        ),
    )
    registry = ModelRegistry.from_dirs(config.model_dirs)
    link = _register_edge(args, config, registry) if args.control_plane else None
    server = EdgeServer(config, registry)
    if link is not None:
        link.start(server.sessions.count, server.sessions.revoke)
    try:
        server.serve_forever()
    finally:
        if link is not None:
            link.stop()
    return 0


def _register_edge(args: argparse.Namespace, config, registry):
    """Register with the control plane; trust its token issuer and take the edge id it assigns."""
    import socket

    from edge_server.control import ControlPlaneLink
    from splitft.errors import InvalidArgument

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
        ca_pem=_control_plane_ca(args),
        insecure=args.insecure,
        credential_file=args.edge_credential_file,
    )
    registration = link.register()
    config.token_issuer_pems.append(registration.issuer_public_pem)
    config.edge_id = registration.edge_id
    return link


def _control_plane_ca(args: argparse.Namespace) -> bytes | None:
    """The CA that verifies the control plane: --control-plane-ca, else the deployment CA in --certs."""
    from pathlib import Path

    from splitft.security.trust import read_ca_file

    if args.control_plane_ca:
        return read_ca_file(args.control_plane_ca).encode()
    if args.certs and (Path(args.certs) / "ca.pem").is_file():
        return read_ca_file(Path(args.certs) / "ca.pem").encode()
    return None  # the system's trust store (e.g. a public certificate on a TLS-terminating proxy)


def _edge_health(args: argparse.Namespace) -> int:
    """One gRPC health check (the container and Kubernetes probe): 0 when SERVING, else 1."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    options = [("grpc.ssl_target_name_override", args.server_name)] if args.server_name else []
    if args.insecure:
        channel = grpc.insecure_channel(args.address)
    else:
        channel = grpc.secure_channel(args.address, _health_credentials(args), options=options)
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


def _health_credentials(args: argparse.Namespace):
    """Mutual TLS as a device: the deployment CA and a client certificate (default: devices/healthcheck)."""
    from pathlib import Path

    import grpc

    from splitft.errors import InvalidArgument
    from splitft.security.certs import CertPaths

    if not args.certs:
        raise InvalidArgument("give --certs DIR (mutual TLS with a client certificate) or --insecure")
    paths = CertPaths(Path(args.certs))
    cert = Path(args.cert) if args.cert else paths.device_cert("healthcheck")
    key = Path(args.key) if args.key else paths.device_key("healthcheck")
    return grpc.ssl_channel_credentials(paths.ca_cert.read_bytes(), key.read_bytes(), cert.read_bytes())


def _control_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from splitft.security.trust import is_loopback
    from splitft_control.app import create_app

    settings = _control_settings(args)
    tls = settings.tls_files()  # checked before anything starts: a missing file is a CLI error
    if tls is None and not is_loopback(args.host):
        logger.warning(
            "serving the control plane over plaintext HTTP: bearer secrets and the CA cross the network "
            "in clear; give --certs DIR for HTTPS unless a TLS-terminating proxy is in front"
        )
    app = create_app(settings)
    ssl = {"ssl_certfile": str(tls[0]), "ssl_keyfile": str(tls[1])} if tls else {}
    uvicorn.run(app, host=args.host, port=args.port, log_config=None, timeout_graceful_shutdown=10, **ssl)
    return 0


def _control_settings(args: argparse.Namespace):
    from pathlib import Path

    from pydantic import ValidationError

    from splitft.errors import InvalidArgument
    from splitft_control.settings import ControlSettings

    overrides = {
        "data_dir": Path(args.data_dir) if args.data_dir else None,
        "db_url": args.db,
        "dev_mode": True if getattr(args, "dev", False) else None,
        "certs_dir": Path(args.certs_dir) if getattr(args, "certs_dir", None) else None,
        "tls_certs_dir": Path(args.certs) if getattr(args, "certs", None) else None,
    }
    try:
        return ControlSettings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        raise InvalidArgument("; ".join(e["msg"] for e in exc.errors())) from None


def _control_migrate(args: argparse.Namespace) -> int:
    from splitft_control.migrate import migrated_store

    migrated_store(_control_settings(args))
    return 0


def _control_keys(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from splitft_control.migrate import migrated_store

    store = migrated_store(_control_settings(args))
    if args.keys_command == "create":
        row, key = store.create_api_key(name=args.name)
        sys.stdout.write(f"{row.id} {key}\n")
    elif args.keys_command == "revoke":
        store.revoke_api_key(key_id=args.id)
    else:
        table = Table("id", "name", "created", "revoked")
        for row in store.list_api_keys():
            table.add_row(row.id, row.name, str(row.created_at), str(row.revoked_at or ""))
        Console().print(table)
    return 0


def _device_enroll(args: argparse.Namespace) -> int:
    from device_client.credentials import enroll

    credential = enroll(
        args.control_plane, args.token, args.out, force=args.force, ca_file=args.ca, insecure=args.insecure
    )
    sys.stdout.write(
        f"enrolled as {credential.device_name} ({credential.device_id}); credential in {args.out}\n"
    )
    return 0


def _device_run(args: argparse.Namespace) -> int:
    import signal
    import threading

    from device_client.agent import run_device

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    summary = run_device(
        args.credential,
        args.data,
        args.model_dir,
        control_plane=args.control_plane,
        max_sessions=args.max_sessions,
        poll_interval=args.poll_interval,
        insecure=args.insecure,
        stop=stop,
        record_dir=args.record_dir,
    )
    logger.info(
        "device agent done: %d sessions completed, %d failed", len(summary.completed), len(summary.failed)
    )
    return 1 if summary.failed else 0


def _certs_init(args: argparse.Namespace) -> int:
    from splitft.security.certs import init_ca
    from splitft.security.trust import ca_fingerprint

    control_hosts = args.control_host or args.host
    paths = init_ca(args.dir, args.host, control_hosts=control_hosts, force=args.force)
    sys.stdout.write(
        f"CA: {paths.ca_cert} (SHA-256 {ca_fingerprint(paths.ca_cert.read_bytes())})\n"
        f"edge certificate: {paths.edge_cert} (hosts: {', '.join(args.host)})\n"
        f"control-plane certificate: {paths.control_cert} (hosts: {', '.join(control_hosts)})\n"
    )
    return 0


def _certs_control(args: argparse.Namespace) -> int:
    from splitft.security.certs import issue_control

    paths = issue_control(args.dir, args.host, force=args.force)
    sys.stdout.write(f"control-plane certificate: {paths.control_cert} (hosts: {', '.join(args.host)})\n")
    return 0


def _certs_device(args: argparse.Namespace) -> int:
    from splitft.security.certs import issue_device

    cert, key = issue_device(args.dir, args.name, force=args.force)
    sys.stdout.write(f"device certificate: {cert}\ndevice key: {key}\n")
    return 0


def _tokens_keygen(args: argparse.Namespace) -> int:
    from pathlib import Path

    from splitft.security.certs import write_secret_files
    from splitft.security.tokens import generate_issuer_key, private_key_pem, public_key_pem

    key = generate_issuer_key()
    out = Path(args.out)
    write_secret_files(
        {out / "issuer.key": private_key_pem(key)},
        {out / "issuer.pub": public_key_pem(key)},
        force=args.force,
    )
    sys.stdout.write(f"issuer private key: {out / 'issuer.key'}\nissuer public key: {out / 'issuer.pub'}\n")
    return 0


def _tokens_issue(args: argparse.Namespace) -> int:
    from splitft.security.tokens import issue_token, load_private_key

    token = issue_token(
        load_private_key(args.key),
        session=args.session,
        device=args.device,
        model=args.model,
        edge=args.edge,
        job=args.job,
        ttl_seconds=args.ttl,
    )
    sys.stdout.write(token + "\n")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from splitft.demo.loop import LoopDemoConfig, run_loop_demo
    from splitft.demo.sdk import DemoConfig, run_demo

    common = dict(
        model_dir=args.model_dir,
        epochs=args.epochs,
        out_dir=args.out,
        batch_size=args.batch_size,
        max_length=args.max_length,
        lr=args.lr,
        device_layers=args.device_layers,
        head_layers=args.head_layers,
        codec=args.codec,
        max_per_class=args.max_per_class,
    )
    if args.sdk:
        run_demo(DemoConfig(**common))
    else:
        run_loop_demo(LoopDemoConfig(**common, devices=args.devices))
    return 0


def _config_from_args(cls: type[T], args: argparse.Namespace, **overrides: Any) -> T:
    """A benchmark config from the options named like its fields, plus `overrides`."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return cls(**{**given, **overrides})


def _bench_step(args: argparse.Namespace) -> int:
    from splitft.bench.step import StepBenchConfig, run_step_bench

    sys.stdout.write(run_step_bench(_config_from_args(StepBenchConfig, args)) + "\n")
    return 0


def _bench_wire(args: argparse.Namespace) -> int:
    from splitft.bench.wire import DEFAULT_WIRE_CODECS, WireBenchConfig, run_wire_bench

    config = _config_from_args(WireBenchConfig, args, codecs=tuple(args.codec or DEFAULT_WIRE_CODECS))
    sys.stdout.write(run_wire_bench(config) + "\n")
    return 0


def _bench_converge(args: argparse.Namespace) -> int:
    from splitft.bench.converge import DEFAULT_CONVERGE_CODECS, ConvergeBenchConfig, run_converge_bench

    config = _config_from_args(ConvergeBenchConfig, args, codecs=tuple(args.codec or DEFAULT_CONVERGE_CODECS))
    sys.stdout.write(run_converge_bench(config) + "\n")
    return 0


def _bench_memory(args: argparse.Namespace) -> int:
    from splitft.bench.memory import MemoryBenchConfig, run_memory_bench

    sys.stdout.write(run_memory_bench(_config_from_args(MemoryBenchConfig, args)) + "\n")
    return 0


def _bench_sessions(args: argparse.Namespace) -> int:
    from splitft.bench.sessions import SessionsBenchConfig, run_sessions_bench

    sys.stdout.write(run_sessions_bench(_config_from_args(SessionsBenchConfig, args)) + "\n")
    return 0


def _codec(text: str) -> str:
    """A codec argument in its canonical form; argparse turns the error into a usage message (exit 2)."""
    from splitft.compress import parse_codecs
    from splitft.errors import InvalidArgument

    try:
        return str(parse_codecs(text))
    except InvalidArgument as err:
        raise argparse.ArgumentTypeError(err.message) from None


def _session_counts(text: str) -> list[int]:
    try:
        return [int(n) for n in text.split(",") if n.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected counts like 1,2,4,8, got {text!r}") from None


def _bench_control(args: argparse.Namespace) -> int:
    from splitft.bench.control import ControlBenchConfig, run_control_bench

    config = _config_from_args(ControlBenchConfig, args, db_url=args.db)
    sys.stdout.write(run_control_bench(config) + "\n")
    return 0


def _bench_methods(args: argparse.Namespace) -> int:
    from splitft.bench.methods import MethodsBenchConfig, markdown_table, run_methods_bench

    config = _config_from_args(MethodsBenchConfig, args)
    report = run_methods_bench(config)
    sys.stdout.write((markdown_table(report) if args.markdown else report) + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="splitft", description="Device-edge split fine-tuning.")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    commands = parser.add_subparsers(dest="command", required=True)

    edge = commands.add_parser("edge", help="the edge gRPC server").add_subparsers(
        dest="edge_command", required=True
    )
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
    _add_limit_flags(serve)
    serve.set_defaults(func=_edge_serve)
    health = edge.add_parser("health", help="check an edge with the gRPC health service (exit 0 if SERVING)")
    health.add_argument("--address", default="127.0.0.1:50051", metavar="HOST:PORT")
    health.add_argument("--certs", default=None, metavar="DIR", help="mutual TLS with the CA DIR/ca.pem")
    health.add_argument("--cert", default=None, help="default: DIR/devices/healthcheck.pem")
    health.add_argument("--key", default=None, help="default: DIR/devices/healthcheck.key")
    health.add_argument("--insecure", action="store_true", help="plaintext, for an edge run with --insecure")
    health.add_argument("--server-name", default=None, help="name to verify in the edge certificate")
    health.add_argument("--service", default="", help="service to check (default: the whole server)")
    health.add_argument("--timeout", type=float, default=5.0, help="seconds")
    health.set_defaults(func=_edge_health)

    control = commands.add_parser("control", help="the REST control plane").add_subparsers(
        dest="control_command", required=True
    )
    cserve = control.add_parser("serve", help="serve the control plane (FastAPI + uvicorn)")
    cserve.add_argument("--host", default="127.0.0.1")
    cserve.add_argument("--port", type=int, default=8080)
    cserve.add_argument(
        "--certs",
        default=None,
        metavar="DIR",
        help="serve HTTPS with DIR/control.pem and DIR/control.key (`certs init`); "
        "DIR/ca.key also signs device CSRs unless --certs-dir says otherwise",
    )
    cserve.add_argument("--certs-dir", default=None, help="deployment CA that signs device CSRs")
    cserve.add_argument(
        "--dev", action="store_true", help="allow weak or missing secrets (local experiments)"
    )
    cserve.set_defaults(func=_control_serve)
    cmigrate = control.add_parser("migrate", help="apply database migrations and exit")
    cmigrate.set_defaults(func=_control_migrate)
    ckeys = control.add_parser("keys", help="operator API keys").add_subparsers(
        dest="keys_command", required=True
    )
    kcreate = ckeys.add_parser("create", help="create a key; prints its id and the key once")
    kcreate.add_argument("--name", required=True)
    kcreate.set_defaults(func=_control_keys)
    ckeys.add_parser("list", help="list keys").set_defaults(func=_control_keys)
    krevoke = ckeys.add_parser("revoke", help="revoke a key by id")
    krevoke.add_argument("--id", required=True)
    krevoke.set_defaults(func=_control_keys)
    for sub in (cserve, cmigrate, kcreate, krevoke, *[p for n, p in ckeys.choices.items() if n == "list"]):
        sub.add_argument(
            "--db", default=None, metavar="URL", help="SQLAlchemy URL (default: SQLite in --data-dir)"
        )
        sub.add_argument("--data-dir", default=None, help="default: ./splitft-data or $SPLITFT_DATA_DIR")

    device_cmd = commands.add_parser("device", help="the device agent").add_subparsers(
        dest="device_command", required=True
    )
    denroll = device_cmd.add_parser("enroll", help="trade an enrollment token for a credential file")
    denroll.add_argument(
        "--control-plane",
        required=True,
        metavar="URL",
        help="https:// (http:// only to loopback or --insecure)",
    )
    denroll.add_argument(
        "--token",
        required=True,
        help="the one-time enrollment token from POST /v1/devices (it pins the CA the device will trust)",
    )
    denroll.add_argument(
        "--ca",
        default=None,
        metavar="PEM",
        help="CA that verifies the control plane's HTTPS (default: the CA the token pins, else the system's)",
    )
    denroll.add_argument(
        "--insecure", action="store_true", help="allow a plaintext http:// control plane on another host"
    )
    denroll.add_argument("--out", required=True, help="credential file to write (0600)")
    denroll.add_argument("--force", action="store_true")
    denroll.set_defaults(func=_device_enroll)
    drun = device_cmd.add_parser("run", help="poll for sessions and train them on local data")
    drun.add_argument("--control-plane", default=None, metavar="URL", help="default: the credential file's")
    drun.add_argument("--credential", required=True, help="credential file from `device enroll`")
    drun.add_argument("--data", required=True, help='JSONL with {"text": ..., "label": int} per line')
    drun.add_argument(
        "--model-dir",
        action="append",
        required=True,
        metavar="[NAME=]DIR",
        help="local model directory for a model name the jobs use; repeatable",
    )
    drun.add_argument("--max-sessions", type=int, default=None, help="exit after this many sessions")
    drun.add_argument("--poll-interval", type=float, default=2.0)
    drun.add_argument(
        "--insecure",
        action="store_true",
        help="dial edges in plaintext and allow a plaintext http:// control plane on another host "
        "(local experiments)",
    )
    drun.add_argument(
        "--record-dir",
        default=None,
        help="also keep each session's adapter and evaluation logits on a few examples here",
    )
    drun.set_defaults(func=_device_run)

    certs = commands.add_parser("certs", help="certificates for mutual TLS").add_subparsers(
        dest="certs_command", required=True
    )
    init = certs.add_parser("init", help="create the deployment CA and the edge's server certificate")
    init.add_argument("--dir", required=True)
    init.add_argument("--host", action="append", required=True, help="DNS name or IP of the edge; repeatable")
    init.add_argument(
        "--control-host",
        action="append",
        default=None,
        help="DNS name or IP of the control plane (control.pem); repeatable (default: the --host values)",
    )
    init.add_argument("--force", action="store_true", help="replace existing files")
    init.set_defaults(func=_certs_init)
    ccontrol = certs.add_parser(
        "control", help="issue the control plane's HTTPS certificate from an existing CA"
    )
    ccontrol.add_argument("--dir", required=True)
    ccontrol.add_argument("--host", action="append", required=True, help="DNS name or IP; repeatable")
    ccontrol.add_argument("--force", action="store_true")
    ccontrol.set_defaults(func=_certs_control)
    device = certs.add_parser("device", help="issue a device's client certificate (CN = NAME)")
    device.add_argument("--dir", required=True)
    device.add_argument("--name", required=True)
    device.add_argument("--force", action="store_true")
    device.set_defaults(func=_certs_device)

    tokens = commands.add_parser("tokens", help="session tokens").add_subparsers(
        dest="tokens_command", required=True
    )
    keygen = tokens.add_parser("keygen", help="create an Ed25519 token issuer key pair")
    keygen.add_argument("--out", required=True, help="writes OUT/issuer.key (0600) and OUT/issuer.pub")
    keygen.add_argument("--force", action="store_true")
    keygen.set_defaults(func=_tokens_keygen)
    issue = tokens.add_parser("issue", help="sign a session token")
    issue.add_argument("--key", required=True, help="the issuer's private key (PEM)")
    issue.add_argument("--session", required=True)
    issue.add_argument("--device", required=True, help="must equal the CN of the device's certificate")
    issue.add_argument("--model", required=True, help="the model name on the edge")
    issue.add_argument("--edge", default="", help="restrict to this edge id")
    issue.add_argument("--job", default="")
    issue.add_argument("--ttl", type=int, default=3600, help="seconds until the token expires")
    issue.set_defaults(func=_tokens_issue)

    demo = commands.add_parser("demo", help="fine-tune a real pretrained model split across a local edge")
    demo.add_argument(
        "--model-dir", default=None, help="a supported model (default: packaged all-MiniLM-L6-v2)"
    )
    demo.add_argument(
        "--sdk",
        action="store_true",
        help="one device driving the SDK directly (no control plane), with a per-step progress bar",
    )
    demo.add_argument("--devices", type=int, default=3, help="device agents in the whole-loop demo")
    demo.add_argument("--epochs", type=int, default=3)
    demo.add_argument("--batch-size", type=int, default=16)
    demo.add_argument("--max-length", type=int, default=64)
    demo.add_argument("--lr", type=float, default=2e-3)
    demo.add_argument("--device-layers", type=int, default=2)
    demo.add_argument("--head-layers", type=int, default=1)
    demo.add_argument(
        "--codec",
        type=_codec,
        default="raw",
        help="wire codec, e.g. int8 or activations=int8,gradients=lowrank:8:noef (default raw)",
    )
    demo.add_argument("--max-per-class", type=int, default=160)
    demo.add_argument("--out", default="runs/demo", help="where the adapter and logs go")
    demo.set_defaults(func=_demo)

    bench = commands.add_parser("bench", help="benchmarks").add_subparsers(
        dest="bench_command", required=True
    )
    step = bench.add_parser(
        "step", help="step time one-process vs split over loopback: mTLS, stream, pipelining (JSON)"
    )
    wire = bench.add_parser("wire", help="bytes per step up and down per codec, relative to raw (JSON)")
    for sub in (step, wire):
        sub.add_argument("--family", default="llama", choices=["llama", "gpt2", "bert", "vit"])
        sub.add_argument("--layers", type=int, default=8)
        sub.add_argument("--hidden", type=int, default=512)
        sub.add_argument("--batch", type=int, default=8)
        sub.add_argument("--tokens", type=int, default=128)
        sub.add_argument("--threads", type=int, default=1, help="torch threads for each process")
        sub.add_argument("--device-layers", type=int, default=1)
        sub.add_argument("--head-layers", type=int, default=1)
    step.add_argument("--repeats", type=int, default=10)
    step.set_defaults(func=_bench_step)
    codec_help = (
        "a codec to measure, e.g. int8 or activations=int8,gradients=topk:0.01; repeat (default: all)"
    )
    wire.add_argument("--steps", type=int, default=2, help="measured steps per codec, after a warm-up step")
    wire.add_argument("--codec", action="append", type=_codec, help=codec_help)
    wire.set_defaults(func=_bench_wire)
    converge = bench.add_parser("converge", help="held-out loss after N steps per codec vs raw (JSON)")
    converge.add_argument(
        "--tasks", nargs="+", default=["classification", "causal_lm"], choices=["classification", "causal_lm"]
    )
    converge.add_argument("--codec", action="append", type=_codec, help=codec_help)
    converge.add_argument("--steps", type=int, default=60, help="optimizer steps per task and codec")
    converge.add_argument("--seed", type=int, default=0)
    converge.add_argument("--threads", type=int, default=2, help="torch threads here and in the edge")
    converge.set_defaults(func=_bench_converge)
    memory = bench.add_parser(
        "memory", help="device peak memory vs the whole model in one process, device share (JSON)"
    )
    sessions = bench.add_parser("sessions", help="aggregate edge throughput with N concurrent sessions")
    for sub, n_hidden, n_tokens, n_head in ((memory, 512, 128, 0), (sessions, 256, 64, 1)):
        sub.add_argument("--family", default="llama", choices=["llama", "gpt2", "bert", "vit"])
        sub.add_argument("--layers", type=int, default=8)
        sub.add_argument("--hidden", type=int, default=n_hidden)
        sub.add_argument("--batch", type=int, default=8)
        sub.add_argument("--tokens", type=int, default=n_tokens)
        sub.add_argument("--device-layers", type=int, default=1)
        sub.add_argument("--head-layers", type=int, default=n_head)
        sub.add_argument(
            "--codec", type=_codec, default="raw", help="wire codec of the split sessions (default raw)"
        )
    memory.add_argument("--steps", type=int, default=3, help="training steps measured in each process")
    memory.add_argument("--threads", type=int, default=1, help="torch threads for each process")
    memory.set_defaults(func=_bench_memory)
    sessions.add_argument(
        "--sessions", type=_session_counts, default=[1, 2, 4, 8], help="concurrent sessions, e.g. 1,2,4,8"
    )
    sessions.add_argument("--seconds", type=float, default=10.0, help="measured window per session count")
    sessions.add_argument("--warmup-steps", type=int, default=2, help="per device, before any window")
    sessions.add_argument("--threads", type=int, default=1, help="torch threads in the edge process")
    sessions.add_argument("--device-threads", type=int, default=1, help="torch threads per device process")
    sessions.set_defaults(func=_bench_sessions)
    mbench = bench.add_parser("methods", help="LoRA vs TaskEdge vs TinyTrain vs head-only at equal budgets")
    mbench.add_argument(
        "--tasks", nargs="+", default=["classification", "causal_lm"], choices=["classification", "causal_lm"]
    )
    mbench.add_argument(
        "--methods",
        nargs="+",
        default=["lora", "taskedge", "tinytrain", "head_only"],
        choices=["lora", "taskedge", "tinytrain", "head_only"],
    )
    mbench.add_argument("--threads", type=int, default=2)
    mbench.add_argument("--max-steps", type=int, default=None, help="cap optimizer steps (smoke runs)")
    mbench.add_argument("--markdown", action="store_true", help="print the table instead of JSON")
    mbench.set_defaults(func=_bench_methods)
    cbench = bench.add_parser("control", help="job-status latency of the control plane under concurrent load")
    cbench.add_argument("--clients", type=int, default=16)
    cbench.add_argument("--requests", type=int, default=200, help="per client")
    cbench.add_argument("--jobs", type=int, default=50)
    cbench.add_argument("--db", default=None, metavar="URL", help="default: SQLite in a temp dir")
    cbench.set_defaults(func=_bench_control)
    return parser


_LIMIT_FLAGS = {  # edge serve flag -> what it bounds; defaults in edge_server/limits.py, README "Security"
    "max_request_bytes": "bytes of all tensors of one request",
    "max_sequence_length": "tokens per row of a forward",
    "max_batch_tokens": "batch x tokens of a forward",
    "max_adapter_parameters": "trainable trunk parameters per session",
    "max_sessions_per_device": "open sessions of one device",
    "max_calls_per_device": "concurrent calls (open streams included) of one device",
}


def _add_limit_flags(serve: argparse.ArgumentParser) -> None:
    for name, what in _LIMIT_FLAGS.items():
        flag = "--" + name.replace("_", "-")
        serve.add_argument(flag, type=int, default=None, help=f"at most this many {what}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    probe = args.command == "edge" and getattr(args, "edge_command", None) == "health"
    _configure_logging(args.log_level, model_stack=not probe)
    try:
        return int(args.func(args))
    except SplitftError as exc:
        logger.error("%s", exc.message)
        return 2
    except OSError as exc:
        logger.error("%s", exc)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
