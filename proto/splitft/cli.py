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

    if not args.insecure:
        logger.error(
            "refusing to start: TLS is not configured yet. Pass --insecure to serve plaintext gRPC "
            "for a local experiment (activations and adapters would be readable on the network)."
        )
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    config = EdgeConfig(
        model_dirs=args.model_dir,
        host=args.host,
        port=args.port,
        insecure=args.insecure,
        session_ttl=args.session_ttl,
        max_sessions=args.max_sessions,
    )
    EdgeServer(config).serve_forever()
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
    serve.add_argument("--insecure", action="store_true", help="plaintext gRPC, for local experiments only")
    serve.add_argument(
        "--session-ttl", type=float, default=600.0, help="seconds before an idle session is dropped"
    )
    serve.add_argument("--max-sessions", type=int, default=64)
    serve.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    serve.set_defaults(func=_edge_serve)

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
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
