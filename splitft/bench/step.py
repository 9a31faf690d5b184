"""`splitft bench step`: one training step in one process vs split over loopback, side by side.

Runs per round, each edge in its own process:

- `local`: the whole peft model in this process, `threads` torch threads (what each split process
  gets); `local_equal_total`: the same with 2 x `threads`, the split's two processes together;
- `split_insecure`: split over plaintext gRPC; `split_mtls`: over mutual TLS with session tokens
  (one `Train` stream per session); `split_mtls_per_call`: the same with one unary call per tensor;
  `split_mtls_pipelined_2` and `_4`: the mTLS split with the batch cut into 2 and 4 pipelined
  micro-batches (`SplitModel.forward_backward`); all with `threads` torch threads in the device
  (this process) and in the edge;
- `local_default` and `split_default`: what a user gets without choosing: torch's default thread
  count in this process, and an edge started by `splitft edge serve` without `--threads` (mTLS,
  stream): the split's own overhead when device and edge share the machine;
  `split_default_teams_kept`: the same with that edge started with `SPLITFT_IDLE_THREADS=keep`, as
  edges were before they ended each call's OpenMP team (`splitft.threads`).

Rounds alternate the order of the runs (forward on even rounds, reversed on odd), after two warm-up
rounds; the report gives each run's step time and each ratio's per-round values as median,
quartiles and extremes, and the CPU seconds per step of this process and of the edge processes
(from /proc), which show waste (threads spinning while idle) apart from the machine's noise.
Bytes per step per codec are `splitft bench wire`'s job.
"""

from __future__ import annotations

import functools
import json
import logging
import tempfile
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from peft import get_peft_model

from device_client import EdgeConnection
from splitft.bench.common import BenchModelConfig, split_model, spread, torch_threads, train_step
from splitft.bench.procfs import own_cpu_seconds, total_cpu_seconds
from splitft.errors import InvalidArgument
from splitft.local.launch import EdgeProcess, LocalPki
from splitft.model.placement import Placement
from splitft.testing.tiny import lora_config_for, make_batch, save_tiny_model
from splitft.threads import IDLE_THREADS_ENV

logger = logging.getLogger(__name__)

StepFn = Callable[[], float]
RATIOS = (
    ("split_insecure", "local"),
    ("split_insecure", "local_equal_total"),
    ("split_mtls", "local"),
    ("split_mtls", "local_equal_total"),
    ("split_mtls", "split_insecure"),
    ("split_mtls_per_call", "split_mtls"),
    ("split_mtls_pipelined_2", "split_mtls"),
    ("split_mtls_pipelined_4", "split_mtls"),
    ("split_mtls_pipelined_2", "local_equal_total"),
    ("split_default", "local_default"),
    ("split_default_teams_kept", "local_default"),
    ("split_default", "split_default_teams_kept"),
)
# The mTLS sessions: (run, stream or one call per tensor, edge: "fixed" threads, "default" or "kept")
MTLS_RUNS = (
    ("split_mtls", True, "fixed"),
    ("split_mtls_per_call", False, "fixed"),
    ("split_mtls_pipelined_2", True, "fixed"),
    ("split_mtls_pipelined_4", True, "fixed"),
    ("split_default", True, "default"),
    ("split_default_teams_kept", True, "kept"),
)


@dataclass
class StepBenchConfig(BenchModelConfig):
    """`bench step`: the model and batch, and how many alternating rounds to time."""

    repeats: int = 10
    device: str = "cpu"  # where the one-process model, the device side and the edges compute
    dtype: str = "float32"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.repeats < 1:
            raise InvalidArgument("repeats must be >= 1")
        Placement(self.device, self.dtype).resolve()  # refused here, before any process starts


@dataclass(frozen=True)
class Run:
    """One alternative: its torch threads in this process (the device, or the whole model) and its
    edge's (None: no edge; 0: `edge serve`'s default), and the step that returns its seconds."""

    threads: int
    edge_threads: int | None
    step: StepFn


def _param_bytes(params) -> tuple[int, int]:
    params = list(params)
    return sum(p.numel() for p in params), sum(p.numel() * p.element_size() for p in params)


def run_step_bench(config: StepBenchConfig) -> str:
    """Run the benchmark and return its JSON report."""
    default_threads = torch.get_num_threads()  # torch's default when this process has not changed it
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        tiny = save_tiny_model(config.family, Path(tmp) / "model", layers=config.layers, hidden=config.hidden)
        batch = make_batch(config.family, torch.Generator().manual_seed(0), config.batch, config.tokens)
        batch = {k: v.to(config.device) for k, v in batch.items()}
        torch.manual_seed(0)
        base = tiny.model_class.from_pretrained(tiny.path, dtype=getattr(torch, config.dtype))
        local = get_peft_model(base.to(config.device), lora_config_for(config.family))  # type: ignore[arg-type]
        local_opt = torch.optim.AdamW([p for p in local.parameters() if p.requires_grad], lr=1e-3)
        secure = LocalPki.create(Path(tmp) / "pki", device="bench")
        models = [f"bench={tiny.path}"]
        placed_args = ["--device", config.device, "--dtype", config.dtype]
        issuer = ["--token-issuer-key", str(secure.issuer_pub), *placed_args]
        plain_edge = stack.enter_context(EdgeProcess(models, threads=config.threads, extra_args=placed_args))
        edges = {  # mTLS edges: `threads` torch threads, and `edge serve`'s default (no --threads)
            "fixed": stack.enter_context(
                EdgeProcess(models, threads=config.threads, tls=secure.tls, extra_args=issuer)
            ),
            "default": stack.enter_context(EdgeProcess(models, tls=secure.tls, extra_args=issuer)),
            "kept": stack.enter_context(
                EdgeProcess(models, tls=secure.tls, extra_args=issuer, env={IDLE_THREADS_ENV: "keep"})
            ),
        }
        plain_conn = stack.enter_context(EdgeConnection(plain_edge.address, insecure=True))
        placed: dict[str, Any] = {"device": config.device, "dtype": config.dtype}
        splits: dict[str, tuple[Any, Any]] = {
            "split_insecure": split_model(tiny.path, plain_conn, config, **placed)
        }
        stack.callback(splits["split_insecure"][0].close)
        for name, stream, edge in MTLS_RUNS:
            conn = stack.enter_context(
                secure.connect(edges[edge].address, session=f"bench-{name}", model="bench")
            )
            splits[name] = split_model(tiny.path, conn, config, stream=stream, **placed)
            stack.callback(splits[name][0].close)  # before its connection closes (last in, first out)
        local_step = functools.partial(train_step, local, local_opt, batch)
        runs = _runs(local_step, splits, batch, config.threads, default_threads)
        pids = [e.process.pid for e in (plain_edge, *edges.values()) if e.process is not None]
        timing = interleaved(runs, config.repeats, RATIOS, edge_pids=pids)
        share = _device_share(local, splits["split_insecure"][0])
    report = {
        "benchmark": "step",
        "config": asdict(config),
        "default_threads": default_threads,
        **timing,
        "device_share": share,
    }
    return json.dumps(report, indent=2)


def _runs(
    local_step: StepFn,
    splits: dict[str, tuple[Any, Any]],
    batch: dict[str, torch.Tensor],
    threads: int,
    default_threads: int,
) -> dict[str, Run]:
    runs = {
        "local": Run(threads, None, local_step),
        "local_equal_total": Run(2 * threads, None, local_step),
        "local_default": Run(default_threads, None, local_step),
    }
    for name, (model, opt) in splits.items():
        micro = int(name.rsplit("_", 1)[1]) if "pipelined" in name else 0
        default = name.startswith("split_default")
        runs[name] = Run(
            default_threads if default else threads,
            0 if default else threads,
            functools.partial(train_step, model, opt, batch, micro),
        )
    return runs


def _timed(run: Run, edge_pids: Sequence[int]) -> tuple[float, float, float | None]:
    """(wall seconds, CPU seconds of this process, CPU seconds of all edge processes) of one step."""
    with torch_threads(run.threads):
        device_before, edges_before = own_cpu_seconds(), total_cpu_seconds(edge_pids)
        wall = run.step()
        device_after, edges_after = own_cpu_seconds(), total_cpu_seconds(edge_pids)
    device = device_after - device_before
    edges = None if edges_before is None or edges_after is None else edges_after - edges_before
    return wall, device, edges


def interleaved(
    runs: dict[str, Run],
    repeats: int,
    ratios: tuple[tuple[str, str], ...],
    *,
    edge_pids: Sequence[int] = (),
    warmup_rounds: int = 2,
) -> dict[str, Any]:
    """Time each run once per round, the order reversed every other round; the spread of each run's
    step time and CPU time and of each ratio's per-round values."""
    for _ in range(warmup_rounds):  # allocator, first-call overheads, gRPC connection, TLS handshake
        for run in runs.values():
            _timed(run, edge_pids)
    names = list(runs)
    walls: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, dict[str, list[float]]] = {name: {"device": [], "edges": []} for name in names}
    for round_ in range(repeats):
        logger.info("bench: round %d of %d", round_ + 1, repeats)
        for name in names if round_ % 2 == 0 else reversed(names):
            wall, device, edges = _timed(runs[name], edge_pids)
            walls[name].append(wall)
            for side, value in (("device", device), ("edges", edges)):
                if value is not None:
                    cpu[name][side].append(value)
    return {
        "rounds": repeats,
        "order": "alternating: the runs in the listed order on even rounds, reversed on odd rounds",
        "threads": {name: {"device": run.threads, "edge": run.edge_threads} for name, run in runs.items()},
        "step_seconds": {name: spread(values) for name, values in walls.items()},
        "ratios": {
            f"{a}_vs_{b}": spread([x / y for x, y in zip(walls[a], walls[b], strict=True)], 3)
            for a, b in ratios
            if a in walls and b in walls
        },
        "cpu_seconds_per_step": {
            name: {side: spread(values, 3)["median"] for side, values in sides.items() if values}
            for name, sides in cpu.items()
        },
    }


def _device_share(local, split) -> dict[str, float]:
    whole_params, whole_bytes = _param_bytes(p for n, p in local.named_parameters() if "lora_" not in n)
    dev_params, dev_bytes = _param_bytes(p for n, p in split.named_parameters() if "lora_" not in n)
    return {
        "whole_model_parameters": whole_params,
        "device_parameters": dev_params,
        "device_parameter_fraction": round(dev_params / whole_params, 4),
        "whole_model_bytes": whole_bytes,
        "device_bytes": dev_bytes,
    }
