"""`splitft bench step|wire|converge|memory|sessions|edge|methods|sparse|fewshot|vit|control|
quantize|federated|resume|generate|offsite`: the benchmarks (parsers only).

The option names match the fields of each benchmark's config dataclass, which the command
handlers fill from them (`splitft.cli.commands.bench.config_from_args`).
"""

from __future__ import annotations

import argparse

from splitft.cli.args import (
    CODEC_HELP,
    add_model_shape,
    add_report_options,
    add_split_layers,
    codec,
    handled_by,
    name_list,
    session_counts,
)
from splitft.cli.bench_regimes import register_fewshot, register_vit
from splitft.model.choices import DTYPE_NAMES
from splitft.model.schemes import QUANTIZE_SCHEMES

FAMILIES = ["llama", "gpt2", "bert", "vit"]
TASKS = ["classification", "causal_lm"]
METHODS = ["lora", "taskedge", "tinytrain", "random", "magnitude", "tinytrain_nocost", "full", "head_only"]


def register(commands: argparse._SubParsersAction) -> None:
    """Add the `bench` group and its benchmarks to the top-level `commands`."""
    bench = commands.add_parser("bench", help="benchmarks").add_subparsers(
        dest="bench_command", required=True
    )
    _register_step_and_wire(bench)
    _register_converge(bench)
    _register_memory_and_sessions(bench)
    _register_edge(bench)
    _register_methods(bench)
    _register_sparse(bench)
    register_fewshot(bench)
    register_vit(bench)
    _register_control(bench)
    _register_quantize(bench)
    _register_federated(bench)
    _register_resume(bench)
    _register_generate(bench)
    _register_offsite(bench)


def _register_step_and_wire(bench: argparse._SubParsersAction) -> None:
    step = bench.add_parser(
        "step",
        help="step time one-process (same and equal total threads, torch's default) vs split over "
        "loopback: mTLS, stream, pipelining, default threads (JSON)",
    )
    wire = bench.add_parser("wire", help="bytes per step up and down per codec, relative to raw (JSON)")
    for sub in (step, wire):
        add_model_shape(sub, layers=8, hidden=512, batch=8, tokens=128, families=FAMILIES)
        sub.add_argument(
            "--threads",
            type=int,
            default=1,
            help="torch threads for each process (step: the one-process "
            "baseline also runs with twice as many, the split's total)",
        )
        add_split_layers(sub, head_layers=1)
    step.add_argument("--repeats", type=int, default=10)
    step.add_argument(
        "--device", default="cpu", help="cpu, cuda, cuda:N: the model, both sides (default: cpu)"
    )
    step.add_argument("--dtype", default="float32", choices=DTYPE_NAMES, help="both sides (default: float32)")
    handled_by(step, "bench:step")
    wire.add_argument("--steps", type=int, default=2, help="measured steps per codec, after a warm-up step")
    wire.add_argument("--codec", action="append", type=codec, help=CODEC_HELP)
    handled_by(wire, "bench:wire")


def _register_converge(bench: argparse._SubParsersAction) -> None:
    converge = bench.add_parser("converge", help="held-out loss after N steps per codec vs raw (JSON)")
    converge.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    converge.add_argument("--codec", action="append", type=codec, help=CODEC_HELP)
    converge.add_argument("--steps", type=int, default=60, help="optimizer steps per task and codec")
    converge.add_argument("--seed", type=int, default=0)
    converge.add_argument("--threads", type=int, default=2, help="torch threads here and in the edge")
    handled_by(converge, "bench:converge")


def _register_memory_and_sessions(bench: argparse._SubParsersAction) -> None:
    memory = bench.add_parser(
        "memory", help="device peak memory vs the whole model in one process, device share (JSON)"
    )
    sessions = bench.add_parser("sessions", help="aggregate edge throughput with N concurrent sessions")
    for sub, n_hidden, n_tokens, n_head in ((memory, 512, 128, 0), (sessions, 256, 64, 1)):
        add_model_shape(sub, layers=8, hidden=n_hidden, batch=8, tokens=n_tokens, families=FAMILIES)
        add_split_layers(sub, head_layers=n_head)
        sub.add_argument(
            "--codec", type=codec, default="raw", help="wire codec of the split sessions (default raw)"
        )
    memory.add_argument("--steps", type=int, default=3, help="training steps measured in each process")
    memory.add_argument("--threads", type=int, default=1, help="torch threads for each process")
    handled_by(memory, "bench:memory")
    sessions.add_argument(
        "--sessions", type=session_counts, default=[1, 2, 4, 8], help="concurrent sessions, e.g. 1,2,4,8"
    )
    sessions.add_argument("--seconds", type=float, default=10.0, help="measured window per session count")
    sessions.add_argument("--warmup-steps", type=int, default=2, help="per device, before any window")
    sessions.add_argument("--threads", type=int, default=1, help="torch threads in the edge process")
    sessions.add_argument("--device-threads", type=int, default=1, help="torch threads per device process")
    sessions.add_argument(
        "--dropout-family",
        default="bert",
        choices=["bert", "gpt2", "vit", "none"],
        help="the second model, with dropout modules in every block (default bert; none: only --family)",
    )
    sessions.add_argument("--dropout", type=float, default=0.1, help="the second model's dropout probability")
    handled_by(sessions, "bench:sessions")


def _register_edge(bench: argparse._SubParsersAction) -> None:
    edge = bench.add_parser(
        "edge", help="edge capacity: N synthetic devices, batching on vs off, tokens/s, latency, memory"
    )
    # None: the full grid's value, or --quick's (splitft.bench.edge.QUICK).
    edge.add_argument("--models", type=name_list, default=None, help="llama (no dropout), bert (dropout 0.1)")
    edge.add_argument("--sessions", type=session_counts, default=None, help="default 1,2,4,8,16,32")
    edge.add_argument("--shapes", type=name_list, default=None, help="BATCHxTOKENS; default 1x64,4x64,8x128")
    edge.add_argument("--rounds", type=int, default=None, help="rounds of every window (default 3)")
    edge.add_argument("--seconds", type=float, default=None, help="length of each window (default 5)")
    edge.add_argument("--warmup-steps", type=int, default=None, help="per session and edge (default 2)")
    edge.add_argument("--threads", type=int, default=1, help="torch threads of each edge (default 1)")
    edge.add_argument("--batch-window-ms", type=float, default=None, help="the edges' (default: theirs)")
    edge.add_argument("--dtype", choices=DTYPE_NAMES, default=None, help="the edges' trunk (default float32)")
    edge.add_argument("--quick", action="store_true", help="1,2,8,32 sessions at 1x64, 2 rounds of 2 s")
    add_report_options(edge, tables=True)
    handled_by(edge, "bench:edge")


def _register_methods(bench: argparse._SubParsersAction) -> None:
    methods = bench.add_parser(
        "methods",
        help="LoRA vs TaskEdge vs TinyTrain and baselines at matched budgets: rate chosen on validation, "
        "test reported over seeds",
    )
    methods.add_argument("--quick", action="store_true", help="tiny causal LM, 1 seed, 1 rate (smoke)")
    methods.add_argument("--tasks", nargs="+", default=None, choices=TASKS)
    methods.add_argument("--methods", nargs="+", default=None, choices=METHODS)
    methods.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2")
    methods.add_argument(
        "--lr-multipliers", type=float, nargs="+", default=None, help="x each method's rate (default 1/3 1 3)"
    )
    methods.add_argument("--threads", type=int, default=None, help="torch threads per process (default 2)")
    methods.add_argument("--max-steps", type=int, default=None, help="cap optimizer steps (smoke runs)")
    add_report_options(methods)
    handled_by(methods, "bench:methods")


def _register_control(bench: argparse._SubParsersAction) -> None:
    control = bench.add_parser(
        "control", help="job-status latency of the control plane under concurrent load"
    )
    control.add_argument("--clients", type=int, default=16)
    control.add_argument("--requests", type=int, default=200, help="per client")
    control.add_argument("--jobs", type=int, default=50)
    control.add_argument("--db", default=None, metavar="URL", help="default: SQLite in a temp dir")
    handled_by(control, "bench:control")


def _register_quantize(bench: argparse._SubParsersAction) -> None:
    quantize = bench.add_parser(
        "quantize",
        help="fp32 vs bf16 vs int8 vs nf4 frozen weights on both sides: weight bytes, device peak memory, "
        "step time, held-out loss after bench converge's recipe (JSON)",
    )
    variants = ["none", "bf16", *(s for s in QUANTIZE_SCHEMES if s != "none")]  # none: fp32; bf16: --dtype
    quantize.add_argument("--schemes", nargs="+", default=variants, choices=variants)
    add_model_shape(quantize, layers=8, hidden=512, batch=8, tokens=128)
    quantize.add_argument("--threads", type=int, default=1, help="torch threads in each process")
    quantize.add_argument("--rounds", type=int, default=3, help="of step time and memory, order alternating")
    quantize.add_argument("--steps-per-round", type=int, default=3)
    quantize.add_argument("--converge-tasks", nargs="+", default=["causal_lm"], choices=TASKS)
    quantize.add_argument("--converge-steps", type=int, default=60)
    quantize.add_argument(
        "--memory-rounds", type=int, default=2, help="memory workers per variant, shape and measure"
    )
    quantize.add_argument(
        "--memory-shapes", nargs="+", default=[], metavar="BxT",
        help="batch x tokens of the device peak runs (default: --batch x --tokens, and 1x32)",
    )  # fmt: skip
    quantize.add_argument(
        "--memory-modes", nargs="+", default=["rss", "alloc"],
        choices=["rss", "rss_fixed_threshold", "alloc"],
        help="bench memory's measures (rss_fixed_threshold: rss, glibc's mmap threshold fixed at 128 KiB)",
    )  # fmt: skip
    add_report_options(quantize)
    handled_by(quantize, "bench:quantize")


def _register_federated(bench: argparse._SubParsersAction) -> None:
    fed = bench.add_parser(
        "federated",
        help="non-IID demo task over N devices: independent vs FedAvg vs AirComp vs centralized (JSON)",
    )
    # None: the full run's value, or --quick's (splitft.bench.federated.QUICK).
    fed.add_argument("--devices", type=int, default=None, help="default 4")
    fed.add_argument("--alpha", type=float, default=None, help="Dirichlet alpha of the shards (default 0.5)")
    fed.add_argument("--rounds", type=int, default=None, help="default 20")
    fed.add_argument("--local-steps", type=int, default=None, help="per device and round (default 2)")
    fed.add_argument("--batch-size", type=int, default=None, help="default 8")
    fed.add_argument("--max-length", type=int, default=None, help="tokens per text (default 48)")
    fed.add_argument("--max-per-class", type=int, default=None, help="docstrings per package (default 160)")
    fed.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default 3)")
    fed.add_argument(
        "--first-seed", type=int, default=None, help="seeds N.. instead of 0.. (a run split over processes)"
    )
    fed.add_argument(
        "--merge",
        nargs="+",
        default=None,
        metavar="REPORT",
        help="run nothing: merge JSON reports of one config over disjoint seeds (--first-seed) into one",
    )
    fed.add_argument(
        "--select",
        nargs="+",
        default=None,
        metavar="REPORT",
        help="run nothing: from merged reports of one config at several --lr, choose each variant's lr "
        "on validation and report its test accuracy and the targets",
    )
    _add_server_step(fed)
    fed.add_argument(
        "--validation-fraction",
        type=float,
        default=None,
        help="share of each class's training data held out for validation (default 0.15); "
        "the reported accuracy is on the task's separate test split",
    )
    fed.add_argument("--snr-db", type=float, nargs="+", default=None, help="AirComp SNRs (default 0 10 20)")
    fed.add_argument(
        "--threads", type=int, default=None, help="torch threads here and in the edge (default 1)"
    )
    fed.add_argument(
        "--no-shared-trunk",
        dest="shared_trunk",
        action="store_const",
        const=False,
        default=None,
        help="leave out the fedavg_shared row (trunk_adapter shared), e.g. for a long run",
    )
    fed.add_argument("--quick", action="store_true", help="smoke run: 2 rounds of 2 steps, 1 seed, 20 dB")
    add_report_options(fed, tables=True)
    handled_by(fed, "bench:federated")


def _add_server_step(fed: argparse.ArgumentParser) -> None:
    """The rates: the devices' lr and its schedule, every variant; FedAvgM's options
    (`splitft.federated.server`), every federated row."""
    fed.add_argument("--lr", type=float, default=None, help="AdamW lr, every variant (default 2e-3)")
    fed.add_argument(
        "--lr-schedule",
        choices=("constant", "linear", "cosine"),
        default=None,
        help="the lr over each device's steps, every variant alike (a federated device's over its rounds); "
        "default constant",
    )
    fed.add_argument(
        "--server-momentum",
        type=float,
        default=None,
        help="FedAvgM: the server's momentum over rounds for every federated row, in [0, 1) (default 0)",
    )
    fed.add_argument(
        "--server-lr", type=float, default=None, help="FedAvgM: the server's step size, (0, 10] (default 1)"
    )


def _register_sparse(bench: argparse._SubParsersAction) -> None:
    sparse = bench.add_parser(
        "sparse",
        help="a TaskEdge session's edge memory and step time: sparse delta vs the old dense one (JSON)",
    )
    add_model_shape(sparse, layers=4, hidden=512, batch=4, tokens=128)
    sparse.add_argument("--budget-fraction", type=float, default=0.001, help="TaskEdge's (default 0.001)")
    sparse.add_argument("--rounds", type=int, default=5, help="order alternating; the spread is over rounds")
    sparse.add_argument("--steps", type=int, default=3, help="timed steps per implementation and round")
    sparse.add_argument("--threads", type=int, default=1, help="torch threads")
    sparse.add_argument("--seed", type=int, default=0)
    handled_by(sparse, "bench:sparse")


def _register_resume(bench: argparse._SubParsersAction) -> None:
    resume = bench.add_parser(
        "resume",
        help="cost of resilience: step time with checkpoints every N steps vs none, checkpoint size and "
        "time, time from an edge kill (SIGKILL) to the first resumed step on another edge (JSON)",
    )
    add_model_shape(resume, layers=6, hidden=256, batch=4, tokens=64)
    resume.add_argument("--threads", type=int, default=1, help="torch threads for each process")
    resume.add_argument(
        "--every", type=int, nargs="+", default=[1, 10, 100], help="checkpoint intervals compared with none"
    )
    resume.add_argument("--steps", type=int, default=100, help="timed steps per setting")
    resume.add_argument("--rounds", type=int, default=5, help="chunks of the timed steps, order alternating")
    resume.add_argument("--checkpoint-repeats", type=int, default=5, help="explicit checkpoints timed")
    resume.add_argument("--kill-repeats", type=int, default=3, help="edge kills, a fresh edge process each")
    resume.add_argument("--markdown", action="store_true", help="print a Markdown table instead of JSON")
    resume.add_argument("--json", metavar="PATH", help="also write the JSON report to PATH")
    handled_by(resume, "bench:resume")


def _register_generate(bench: argparse._SubParsersAction) -> None:
    generate = bench.add_parser(
        "generate",
        help="SplitModel.generate tokens per second and bytes per generated token, with key/value "
        "caches on both sides vs without (JSON)",
    )
    add_model_shape(
        generate,
        layers=8,
        hidden=256,
        batch=4,
        tokens=32,
        families=["llama", "gpt2"],
        tokens_help="prompt tokens per row",
    )
    generate.add_argument("--new-tokens", type=int, default=32)
    generate.add_argument("--threads", type=int, default=1, help="torch threads for each process")
    generate.add_argument("--rounds", type=int, default=5, help="of each mode, order alternating")
    generate.add_argument("--quick", action="store_true", help="a tiny model and 2 rounds (tests)")
    generate.add_argument("--markdown", action="store_true", help="print a Markdown table instead of JSON")
    handled_by(generate, "bench:generate")


def _register_offsite(bench: argparse._SubParsersAction) -> None:
    offsite = bench.add_parser(
        "offsite",
        help="zero-shot vs offsite-tuned (emulator, plugged into the full model) vs split with the trunk "
        "frozen vs split with trunk LoRA, on the demo task and the causal LM, over seeds (JSON)",
    )
    offsite.add_argument("--tasks", nargs="+", default=["classification", "causal_lm"], choices=TASKS)
    # None: the full run's value, or --quick's (splitft.bench.offsite.QUICK).
    offsite.add_argument(
        "--steps", type=int, default=None, help="optimizer steps per task, variant, seed (60)"
    )
    offsite.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default 3)")
    offsite.add_argument(
        "--keep", type=int, default=None, help="trunk blocks the emulator keeps (default: half)"
    )
    offsite.add_argument("--distill-steps", type=int, default=None, help="default 200")
    offsite.add_argument("--distill-lr", type=float, default=None, help="default 1e-3")
    offsite.add_argument("--threads", type=int, default=None, help="torch threads here and in the edge (2)")
    offsite.add_argument("--max-per-class", type=int, default=None, help="docstrings per package (160)")
    offsite.add_argument("--lm-pretrain-steps", type=int, default=None, help="default 150")
    offsite.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 3 steps, 1 seed, 3 distillation steps, small data, 1 thread",
    )
    add_report_options(offsite, tables=True)
    handled_by(offsite, "bench:offsite")
