"""`splitft bench edge`: the edge's own capacity, isolated from device compute.

For each model and per-device shape (batch x tokens) one group: two edge processes serving the same
saved model with the same torch thread budget (`--threads`), one with `--batching on` and one with
`--batching off`, and max(`sessions`) synthetic devices (`splitft.bench.edge_device`: separate
processes, the real protocol, no compute of their own), each holding one session on each edge,
opened and warmed up before anything is measured. Then `rounds` rounds; in each, for every N in
`sessions`, the first N devices train through a window of `seconds` on one edge, then on the other
(the rest wait idle on their open sessions). Rounds alternate the order of the two edges and of the
session counts, so that every ratio (batching on / off, N sessions / the fewest) compares windows
of the same round, and the report gives their spread over rounds.

Memory is the edges' resident set from /proc: idle (model loaded, no session), held (every session
open and warmed up), and each window's peak (the peak mark reset at the window's start).
"""

from __future__ import annotations

import json
import logging
import re
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from splitft.bench.edge_device import DevicePool, DeviceSpec
from splitft.bench.edge_models import BENCH_MODELS, DEVICE_LAYERS, HEAD_LAYERS, model_info, save_bench_model
from splitft.bench.edge_report import MODES, build_report, window_summary
from splitft.bench.procfs import cpu_seconds, reset_peak, status_kib, total_cpu_seconds
from splitft.errors import InvalidArgument
from splitft.model.choices import DTYPE_NAMES as EDGE_DTYPES

logger = logging.getLogger(__name__)

START_DELAY_S = 0.5  # between sending a window and its start, so that every device has it in time
SESSION_TTL_S = 3600  # the edges' idle TTL: a session waits through every other window of a round


def parse_shape(text: str) -> tuple[int, int]:
    """`BxT` (rows x tokens per row, e.g. 4x64) as (batch, tokens)."""
    batch, sep, tokens = text.lower().partition("x")
    try:
        pair = (int(batch), int(tokens))
    except ValueError:
        pair = (0, 0)
    if not sep or pair[0] < 1 or pair[1] < 2:
        raise InvalidArgument(
            f"a shape is BATCHxTOKENS with batch >= 1 and tokens >= 2, e.g. 4x64; got {text!r}"
        )
    return pair


@dataclass
class EdgeBenchConfig:
    """`bench edge`: which models, shapes and session counts, and how long to measure each."""

    models: tuple[str, ...] = ("llama", "bert")  # names in BENCH_MODELS: dropout-free, with dropout
    sessions: tuple[int, ...] = (1, 2, 4, 8, 16, 32)  # concurrent sessions per window
    shapes: tuple[str, ...] = ("1x64", "4x64", "8x128")  # per-device batch x tokens per forward
    rounds: int = 3  # each round runs every (N, batching) window once
    seconds: float = 5.0  # each window's length
    warmup_steps: int = 2  # per session and edge, before any window
    threads: int = 1  # torch threads of each edge (both edges the same)
    batch_window_ms: float | None = None  # the edges' --batch-window-ms; None: the edge's default
    dtype: str = "float32"  # the edges' --dtype: the trunk's weights and activations (both edges)

    def __post_init__(self) -> None:
        self.models = tuple(self.models)
        self.sessions = tuple(int(n) for n in self.sessions)
        self.shapes = tuple("{}x{}".format(*parse_shape(s)) for s in self.shapes)
        unknown = sorted(set(self.models) - set(BENCH_MODELS))
        if unknown or not self.models:
            raise InvalidArgument(f"models must be some of {sorted(BENCH_MODELS)}, got {list(self.models)}")
        if not self.sessions or min(self.sessions) < 1 or not self.shapes:
            raise InvalidArgument("sessions must be counts >= 1 and shapes non-empty")
        if self.rounds < 1 or self.seconds <= 0 or self.warmup_steps < 0 or self.threads < 1:
            raise InvalidArgument("need rounds >= 1, seconds > 0, warmup_steps >= 0 and threads >= 1")
        if self.dtype not in EDGE_DTYPES:
            raise InvalidArgument(f"dtype must be one of {', '.join(EDGE_DTYPES)}, got {self.dtype!r}")
        if self.batch_window_ms is not None and not 0 <= self.batch_window_ms <= 1000:
            raise InvalidArgument(f"batch_window_ms must be in [0, 1000], got {self.batch_window_ms:g}")


# `--quick`: both models at 1 x 64 tokens with 1, 2, 8 and 32 sessions, 2 rounds of 2 s windows;
# the cells the targets name, in a few minutes.
QUICK = {"sessions": (1, 2, 8, 32), "shapes": ("1x64",), "rounds": 2, "seconds": 2.0, "warmup_steps": 1}


def run_edge_bench(config: EdgeBenchConfig) -> str:
    """Run the benchmark and return its JSON report."""
    import tempfile

    began = time.monotonic()
    groups = []
    with tempfile.TemporaryDirectory(prefix="splitft-bench-edge-") as tmp:
        with DevicePool(max(config.sessions)) as pool:
            for name in config.models:
                path = save_bench_model(name, Path(tmp) / name)
                for shape in config.shapes:
                    groups.append(_run_group(config, pool, name, path, shape, Path(tmp)))
    report = build_report(
        asdict(config),
        {name: model_info(name) for name in config.models},
        groups,
        seconds=time.monotonic() - began,
    )
    return json.dumps(report, indent=2)


def _edge_args(config: EdgeBenchConfig, mode: str) -> list[str]:
    args = ["--batching", mode, "--session-ttl", str(SESSION_TTL_S)]
    # Every session keeps a stream (a handler slot) open; room for all of them and their unary calls.
    args += ["--max-sessions", str(max(64, 2 * max(config.sessions)))]
    if config.batch_window_ms is not None:
        args += ["--batch-window-ms", f"{config.batch_window_ms:g}"]
    return args + ["--dtype", config.dtype]


@contextmanager
def _edges(config: EdgeBenchConfig, name: str, path: Path, shape: str, log_dir: Path) -> Iterator[dict]:
    """Both edges of a group (batching on and off), started at once; stopped on the way out."""
    from splitft.local.launch import EdgeProcess, free_port

    edges = {
        mode: EdgeProcess(
            [f"{name}={path}"],
            threads=config.threads,
            extra_args=_edge_args(config, mode),
            log_path=str(log_dir / f"edge-{name}-{shape}-batching-{mode}.log"),
            metrics_port=free_port(),  # the batching counters, read around every window
        )
        for mode in MODES
    }
    try:
        with ThreadPoolExecutor(len(edges)) as starting:
            for started in [starting.submit(edge.start) for edge in edges.values()]:
                started.result()
        yield edges
    finally:
        for edge in edges.values():
            edge.stop()


def _run_group(
    config: EdgeBenchConfig, pool: DevicePool, name: str, path: Path, shape: str, log_dir: Path
) -> dict[str, Any]:
    """One model and shape: both edges, every session open on each, all rounds of windows."""
    batch, tokens = parse_shape(shape)
    most = max(config.sessions)
    logger.info("bench edge: %s at %s, %d sessions per edge", name, shape, most)
    with _edges(config, name, path, shape, log_dir) as edges:
        pids = {mode: edge.process.pid for mode, edge in edges.items()}
        memory: dict[str, dict[str, Any]] = {
            mode: {"idle_kib": status_kib(pid, "VmRSS"), "peak_reset": reset_peak(pid)}
            for mode, pid in pids.items()
        }
        spec = _device_spec(config, name, edges, batch, tokens)
        try:
            opened = pool.open(spec, most)
            for mode, pid in pids.items():
                memory[mode]["held_kib"] = status_kib(pid, "VmRSS")
                memory[mode]["open_peak_kib"] = status_kib(pid, "VmHWM")
            windows = [
                _window(config, pool, n, mode, pids[mode], round_, batch * tokens, edges[mode].metrics_port)
                for round_, n, mode in _schedule(config)
            ]
        finally:
            pool.close(most)
    return {
        "model": name,
        "shape": shape,
        "batch": batch,
        "tokens": tokens,
        "open_errors": sum(r.errors for r in opened),
        "open_error_samples": [s for r in opened for s in r.error_samples][:5],
        "memory": memory,
        "windows": windows,
    }


def _device_spec(
    config: EdgeBenchConfig, name: str, edges: dict[str, Any], batch: int, tokens: int
) -> DeviceSpec:
    info = model_info(name)
    return DeviceSpec(
        edges={mode: edge.address for mode, edge in edges.items()},
        model=name,
        model_type=info["model_type"],
        num_layers=info["layers"],
        hidden_size=info["hidden"],
        device_layers=DEVICE_LAYERS,
        head_layers=HEAD_LAYERS,
        lora_config_json=info["lora_config_json"],
        batch=batch,
        tokens=tokens,
        warmup_steps=config.warmup_steps,
    )


def _schedule(config: EdgeBenchConfig) -> Iterator[tuple[int, int, str]]:
    """(round, N, edge) in order: even rounds go up in N with batching on first, odd rounds down
    with batching off first."""
    for round_ in range(config.rounds):
        forward = round_ % 2 == 0
        counts = config.sessions if forward else tuple(reversed(config.sessions))
        for n in counts:
            for mode in MODES if forward else tuple(reversed(MODES)):
                yield round_, n, mode


def _window(
    config: EdgeBenchConfig,
    pool: DevicePool,
    n: int,
    mode: str,
    pid: int,
    round_: int,
    tokens_per_step: int,
    metrics_port: int,
) -> dict[str, Any]:
    logger.info("bench edge: round %d, %d sessions, batching %s", round_ + 1, n, mode)
    device_pids = pool.pids[:n]
    at_start: list[tuple[float, float | None, float | None]] = []

    forwards_before = shared_forwards(metrics_port)

    def started() -> None:
        reset_peak(pid)
        at_start.append((time.monotonic(), cpu_seconds(pid), total_cpu_seconds(device_pids)))

    start = time.monotonic() + START_DELAY_S
    results = pool.run(n, mode, start, start + config.seconds, started)
    (began, edge_cpu, devices_cpu), now = at_start[0], time.monotonic()
    shared, alone = (a - b for a, b in zip(shared_forwards(metrics_port), forwards_before, strict=True))
    return {
        "round": round_,
        "sessions": n,
        "mode": mode,
        **window_summary(results, start, tokens_per_step),
        "edge_cpu_cores": _cores(edge_cpu, cpu_seconds(pid), now - began),
        "devices_cpu_cores": _cores(devices_cpu, total_cpu_seconds(device_pids), now - began),
        "edge_peak_kib": status_kib(pid, "VmHWM"),
        # Forwards (warm-up and window) that ran in a pass shared with other sessions.
        "shared_forward_fraction": round(shared / (shared + alone), 3) if shared + alone else None,
    }


def shared_forwards(port: int) -> tuple[float, float]:
    """The edge's (shared, alone) trunk forward counters, from its Prometheus /metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    counts = dict.fromkeys(("yes", "no"), 0.0)
    for found in re.finditer(r'^splitft_edge_trunk_forwards_total\{shared="(yes|no)"\} (\S+)$', text, re.M):
        counts[found.group(1)] = float(found.group(2))
    return counts["yes"], counts["no"]


def _cores(before: float | None, after: float | None, wall: float) -> float | None:
    return None if before is None or after is None else round((after - before) / wall, 2)
