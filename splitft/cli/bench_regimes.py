"""`splitft bench fewshot|vit`: the parsers of the benchmarks that run a method in its paper's
regime (TinyTrain: few-shot episodes; TaskEdge: a pretrained ViT on small held-out tasks)."""

from __future__ import annotations

import argparse

from splitft.cli.args import add_report_options, handled_by

VIT_TASKS = ["digits", "rotation"]
VIT_METHODS = ["taskedge", "lora", "random", "magnitude", "head_only", "full"]


def _budget_pair(text: str) -> tuple[float, float]:
    memory, sep, macs = text.partition(":")
    try:
        return float(memory), float(macs)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a budget is MEMORY:MACS (shares, e.g. 0.1:0.1), got {text!r}"
        ) from None


def register_fewshot(bench: argparse._SubParsersAction) -> None:
    fewshot = bench.add_parser(
        "fewshot",
        help="TinyTrain in its regime: N-way K-shot episodes of unseen classes under memory and MAC "
        "budgets, vs last-layer-only and full fine-tuning (JSON)",
    )
    fewshot.add_argument("--quick", action="store_true", help="one seed, one short episode per shot count")
    fewshot.add_argument("--shots", type=int, nargs="+", default=None)
    fewshot.add_argument("--ways", type=int, default=None)
    fewshot.add_argument("--seeds", type=int, nargs="+", default=None)
    fewshot.add_argument("--episodes", type=int, default=None, help="per seed and shot count")
    fewshot.add_argument("--steps", type=int, default=None, help="fine-tuning steps per episode")
    fewshot.add_argument(
        "--budgets",
        type=_budget_pair,
        nargs="+",
        default=None,
        help="TinyTrain's MEMORY:MACS budgets as shares of training every block Linear, e.g. 0.1:0.1",
    )
    fewshot.add_argument(
        "--backbone",
        default=None,
        choices=["vit-digits", "bert-stdlib"],
        help="vit-digits (default): bench vit's ViT, digits 0-4, episodes of digits 5-9; "
        "bert-stdlib: a tiny BERT pretrained in the run on stdlib docstrings",
    )
    fewshot.add_argument("--pretrain-steps", type=int, default=None, help="bert-stdlib's pretraining")
    fewshot.add_argument("--threads", type=int, default=None)
    fewshot.add_argument(
        "--cache-dir", default=None, help="vit-digits' backbones (default: bench vit's cache)"
    )
    add_report_options(fewshot)
    handled_by(fewshot, "bench:fewshot")


def register_vit(bench: argparse._SubParsersAction) -> None:
    vit = bench.add_parser(
        "vit",
        help="TaskEdge in its regime: a small ViT pretrained on digits 0-4, fine-tuned on held-out tasks "
        "at 0.05/0.1/0.5%% of its parameters vs LoRA at the same budget and baselines (JSON)",
    )
    vit.add_argument("--quick", action="store_true", help="small backbone, one task, one seed, one rate")
    vit.add_argument("--tasks", nargs="+", default=None, choices=VIT_TASKS)
    vit.add_argument("--methods", nargs="+", default=None, choices=VIT_METHODS)
    vit.add_argument(
        "--budgets",
        type=float,
        nargs="+",
        default=None,
        help="shares of the backbone (default 0.0005 0.001 0.005)",
    )
    vit.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2")
    vit.add_argument(
        "--lr-multipliers",
        type=float,
        nargs="+",
        default=None,
        help="x each method's rate (default 1/3 1 3 10 30)",
    )
    vit.add_argument("--epochs", type=int, default=None, help="fine-tuning passes over the training split")
    vit.add_argument("--pretrain-steps", type=int, default=None)
    vit.add_argument("--threads", type=int, default=None, help="torch threads (default 1)")
    vit.add_argument(
        "--cache-dir", default=None, help="pretrained backbones (default $XDG_CACHE_HOME/splitft/bench-vit)"
    )
    add_report_options(vit)
    handled_by(vit, "bench:vit")
