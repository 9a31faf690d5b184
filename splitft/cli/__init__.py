"""The `splitft` command line: edge server, control plane and its operators, device agent, PKI, demo and
benchmarks.

The parsers (`splitft.cli.{edge,control,operate,device,pki,demo,bench,emulator,plan,privacy}`) are
light and always built, so every `--help` works where the model stack is not installed (the
control-plane image). Each command names its handler in `splitft.cli.commands`, and `main` imports
only that module.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import warnings
from collections.abc import Callable, Sequence

from rich.console import Console
from rich.logging import RichHandler

from splitft.cli import bench, control, demo, device, edge, emulator, operate, pki, plan, privacy
from splitft.errors import SplitftError
from splitft.local.signals import Terminated, unwind_on_sigterm

logger = logging.getLogger("splitft")

# In the order `splitft --help` lists them.
GROUPS = (edge, control, operate, device, pki, demo, bench, emulator, plan, privacy)
# The commands that load models; the others (control, certs, tokens) never import transformers,
# not even to quiet its logging (it costs seconds, and the control-plane image does not have it).
MODEL_STACK_COMMANDS = frozenset({"edge", "device", "demo", "bench", "emulator", "privacy"})
# The commands that start child processes (an edge, workers) and stop them when their `with` block
# exits: SIGTERM must unwind those blocks, or the children outlive a killed run. The servers (edge
# serve, control serve, device agent) keep their own SIGTERM handling.
CHILD_SPAWNING_COMMANDS = frozenset({"bench", "demo", "plan", "emulator", "privacy"})


def build_parser() -> argparse.ArgumentParser:
    """The whole `splitft` parser; each command sets `handler` ("module:function")."""
    parser = argparse.ArgumentParser(prog="splitft", description="Device-edge split fine-tuning.")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    commands = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.register(commands)
    return parser


def load_handler(name: str) -> Callable[[argparse.Namespace], int]:
    """The handler `name` ("module:function") in `splitft.cli.commands`, importing its module now."""
    module, function = name.split(":")
    handler: Callable[[argparse.Namespace], int] = getattr(
        importlib.import_module(f"splitft.cli.commands.{module}"), function
    )
    return handler


def _configure_logging(level: str, *, model_stack: bool = True) -> None:
    # stderr: stdout carries what a command prints for its user (a benchmark's JSON, keys, ...)
    handler = RichHandler(console=Console(stderr=True), show_path=False, rich_tracebacks=False)
    logging.basicConfig(level=level.upper(), format="%(name)s: %(message)s", handlers=[handler], force=True)
    for noisy in ("httpx", "urllib3", "filelock", "alembic", "httpx2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # torchao's PyPI wheel carries CUDA kernels that fail to load on a CPU-only torch (and warns at
    # every import, which peft does): splitft's int8 uses none of them.
    for noisy in ("torchao", "torch.utils._pytree"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    # Library chatter a CLI user cannot act on: HF loading bars and deprecation notices from deps.
    warnings.filterwarnings("ignore", category=FutureWarning)
    if not model_stack:  # e.g. a health probe: importing transformers would cost most of its time
        return
    try:  # here, not at the top: the control-plane install (`splitft[control]`) has no model stack
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `splitft` command `argv` (default: sys.argv); its exit code (2: a refused input)."""
    args = build_parser().parse_args(argv)
    probe = args.command == "edge" and getattr(args, "edge_command", None) == "health"
    _configure_logging(args.log_level, model_stack=args.command in MODEL_STACK_COMMANDS and not probe)
    if args.command in CHILD_SPAWNING_COMMANDS:
        unwind_on_sigterm()
    try:
        return int(load_handler(args.handler)(args))
    except SplitftError as exc:
        logger.error("%s", exc.message)
        return 2
    except OSError as exc:
        logger.error("%s", exc)
        return 2
    except KeyboardInterrupt:
        return 130
    except Terminated:
        logger.error("terminated (SIGTERM): child processes stopped")
        return 143


if __name__ == "__main__":
    sys.exit(main())
