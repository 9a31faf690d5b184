"""The `splitft` command line: edge server, demo and benchmarks."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Sequence

from splitft.errors import SplitftError

logger = logging.getLogger("splitft")


def _configure_logging(level: str) -> None:
    from rich.logging import RichHandler

    handler = RichHandler(show_path=False, rich_tracebacks=False)
    logging.basicConfig(level=level.upper(), format="%(name)s: %(message)s", handlers=[handler], force=True)
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Library chatter a CLI user cannot act on: HF loading bars and deprecation notices from deps.
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)


def _edge_serve(args: argparse.Namespace) -> int:
    import torch

    from edge_server import EdgeConfig, EdgeServer

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
    )
    EdgeServer(config).serve_forever()
    return 0


def _certs_init(args: argparse.Namespace) -> int:
    from splitft.certs import init_ca

    paths = init_ca(args.dir, args.host, force=args.force)
    sys.stdout.write(
        f"CA: {paths.ca_cert}\nedge certificate: {paths.edge_cert} (hosts: {', '.join(args.host)})\n"
    )
    return 0


def _certs_device(args: argparse.Namespace) -> int:
    from splitft.certs import issue_device

    cert, key = issue_device(args.dir, args.name, force=args.force)
    sys.stdout.write(f"device certificate: {cert}\ndevice key: {key}\n")
    return 0


def _tokens_keygen(args: argparse.Namespace) -> int:
    from pathlib import Path

    from splitft.certs import write_secret_files
    from splitft.tokens import generate_issuer_key, private_key_pem, public_key_pem

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
    from splitft.tokens import issue_token, load_private_key

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
    from splitft.demo import DemoConfig, run_demo

    run_demo(
        DemoConfig(
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
    )
    return 0


def _bench_step(args: argparse.Namespace) -> int:
    from splitft.bench import StepBenchConfig, run_step_bench

    config = StepBenchConfig(
        family=args.family,
        layers=args.layers,
        hidden=args.hidden,
        batch=args.batch,
        tokens=args.tokens,
        repeats=args.repeats,
        threads=args.threads,
        device_layers=args.device_layers,
        head_layers=args.head_layers,
    )
    sys.stdout.write(run_step_bench(config) + "\n")
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
    serve.add_argument("--insecure", action="store_true", help="plaintext gRPC, for local experiments only")
    serve.add_argument(
        "--token-issuer-key",
        action="append",
        metavar="PEM",
        help="trust session tokens signed by this Ed25519 public key; repeat for several",
    )
    serve.add_argument("--edge-id", default="", help="this edge's id, matched against a token's edge claim")
    serve.add_argument(
        "--session-ttl", type=float, default=600.0, help="seconds before an idle session is dropped"
    )
    serve.add_argument("--max-sessions", type=int, default=64)
    serve.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    serve.set_defaults(func=_edge_serve)

    certs = commands.add_parser("certs", help="certificates for mutual TLS").add_subparsers(
        dest="certs_command", required=True
    )
    init = certs.add_parser("init", help="create the deployment CA and the edge's server certificate")
    init.add_argument("--dir", required=True)
    init.add_argument("--host", action="append", required=True, help="DNS name or IP of the edge; repeatable")
    init.add_argument("--force", action="store_true", help="replace existing files")
    init.set_defaults(func=_certs_init)
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
    demo.add_argument("--epochs", type=int, default=3)
    demo.add_argument("--batch-size", type=int, default=16)
    demo.add_argument("--max-length", type=int, default=64)
    demo.add_argument("--lr", type=float, default=2e-3)
    demo.add_argument("--device-layers", type=int, default=2)
    demo.add_argument("--head-layers", type=int, default=1)
    demo.add_argument("--codec", default="raw", choices=["raw", "fp16", "bf16"])
    demo.add_argument("--max-per-class", type=int, default=160)
    demo.add_argument("--out", default="runs/demo", help="where the adapter and logs go")
    demo.set_defaults(func=_demo)

    bench = commands.add_parser("bench", help="benchmarks").add_subparsers(
        dest="bench_command", required=True
    )
    step = bench.add_parser(
        "step", help="step time one-process vs split over loopback, bytes per codec (JSON)"
    )
    step.add_argument("--family", default="llama", choices=["llama", "gpt2", "bert", "vit"])
    step.add_argument("--layers", type=int, default=8)
    step.add_argument("--hidden", type=int, default=256)
    step.add_argument("--batch", type=int, default=8)
    step.add_argument("--tokens", type=int, default=64)
    step.add_argument("--repeats", type=int, default=10)
    step.add_argument("--threads", type=int, default=1, help="torch threads for each process")
    step.add_argument("--device-layers", type=int, default=1)
    step.add_argument("--head-layers", type=int, default=1)
    step.set_defaults(func=_bench_step)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args.log_level)
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
