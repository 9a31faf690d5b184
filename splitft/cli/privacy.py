"""`splitft privacy audit`: the privacy meter (parser only; docs/privacy.md)."""

from __future__ import annotations

import argparse

from splitft.cli.args import handled_by


def add_privacy_options(parser: argparse.ArgumentParser) -> None:
    """The `PrivacyConfig` fields as options (checked by PrivacyConfig itself, naming the field)."""
    group = parser.add_argument_group("defenses (PrivacyConfig; all off by default)")
    group.add_argument("--activation-clip", type=float, default=None, help="L2 bound of each token's h_k")
    group.add_argument("--activation-noise", type=float, default=0.0, help="noise std / activation clip")
    group.add_argument("--clip-scope", choices=["token", "example"], default="token")
    group.add_argument(
        "--gradient-clip", type=float, default=None, help="L2 bound of each example's gradient"
    )
    group.add_argument("--gradient-noise", type=float, default=0.0, help="noise std / gradient clip")
    group.add_argument("--nopeek-weight", type=float, default=0.0, help="distance-correlation penalty weight")
    group.add_argument(
        "--nopeek-warmup", type=int, default=0, help="training forwards over which the penalty ramps up"
    )
    group.add_argument(
        "--cca-weight", type=float, default=0.0, help="canonical-correlation penalty weight (public h_k)"
    )
    group.add_argument(
        "--cca-target", type=float, default=0.0, help="the leak the CCA penalty stops pushing below"
    )
    group.add_argument(
        "--private-warmup",
        type=int,
        default=0,
        help="first training forwards that send nothing (the device's blocks train on the penalties)",
    )
    group.add_argument(
        "--warmup-consistency",
        type=float,
        default=0.0,
        help="in the warm-up, keep a public trunk's [CLS] and mean outputs (run on the device) as they were",
    )
    group.add_argument(
        "--warmup-task",
        type=float,
        default=0.0,
        help="in the warm-up, add this weight times the task's loss through a public trunk on the device",
    )
    group.add_argument(
        "--withhold-gradients",
        action="store_true",
        help="send the edge no gradient (the trunk is frozen; only the device's head trains on the task)",
    )
    group.add_argument(
        "--head-skip",
        action="store_true",
        help="the head also reads a private map of h_k that never leaves the device (with withheld "
        "gradients: the task's path back to the device's first blocks)",
    )


def register(commands: argparse._SubParsersAction) -> None:
    """Add `privacy` (with `audit`) to the top-level `commands`."""
    privacy = commands.add_parser("privacy", help="measure what a curious edge learns (docs/privacy.md)")
    sub = privacy.add_subparsers(dest="privacy_command", required=True)
    audit = sub.add_parser(
        "audit",
        help="train the demo task split across a local edge, then attack what the edge received: token "
        "recovery from h_k and label inference from gradients and trunk outputs",
    )
    audit.add_argument(
        "--model-dir", default=None, help="a BERT-style model (default: packaged all-MiniLM-L6-v2)"
    )
    audit.add_argument("--device-layers", type=int, default=2)
    audit.add_argument("--head-layers", type=int, default=1)
    audit.add_argument("--epochs", type=int, default=None, help="default 3 (1 with --quick)")
    audit.add_argument("--lora-rank", type=int, default=8, help="rank of every LoRA adapter")
    audit.add_argument("--public-texts", type=int, default=None, help="public docstrings for the decoders")
    audit.add_argument("--seed", type=int, default=0)
    audit.add_argument("--quick", action="store_true", help="a small task, one epoch, few public texts")
    audit.add_argument(
        "--sweep",
        action="store_true",
        help="the defense curves of docs/privacy.md: one audit per built-in configuration (ignores the "
        "defense options)",
    )
    audit.add_argument(
        "--train-stride", type=int, default=1, help="train on every n-th example (cheaper; same held-out set)"
    )
    audit.add_argument(
        "--mlp-epochs", type=int, default=None, help="MLP decoder epochs (default 4; 1 with --quick)"
    )
    audit.add_argument(
        "--part", default="1/1", help="with --sweep: run only part K of N of the configurations"
    )
    audit.add_argument("--json", default=None, help="also write the report(s) as JSON here")
    add_privacy_options(audit)
    handled_by(audit, "privacy:audit")
