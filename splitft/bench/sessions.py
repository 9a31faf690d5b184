"""`splitft bench sessions`: aggregate edge throughput with 1, 2, 4 and 8 concurrent sessions.

Two models, one after the other, on one edge process (`EdgeProcess`, `threads` torch threads):
`family` (default a Llama-style model, which has no dropout modules) and `dropout_family` (default
BERT-style) with `nn.Dropout(dropout)` in every block, whose training forwards draw from each
session's RNG stream on the edge (the demo's MiniLM is such a model). Per model, max(`sessions`)
device processes (`python -m splitft.bench.sessions --worker`), each with its own session, model,
optimizer and batch: separate processes, so no device shares a GIL or an interpreter with another,
and all of them are started, loaded and warmed up before anything is measured. For each N in `sessions`, the
first N devices train together through the same window of `seconds` (they start at one instant
of the system-wide monotonic clock; each keeps stepping until a step ends past the window) while
the others wait idle on their open sessions. A device's rate is its completed steps over the
time from the window's start to the end of its last step; the aggregate is the sum of the rates.

Everything shares this machine's cores: the devices' own blocks, the edge's trunk and the gRPC
transport. The edge's CPU use during each window (from /proc, in cores) shows how busy it was.
"""

from __future__ import annotations

import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import torch

from splitft.bench.common import BenchModelConfig, split_model, train_step
from splitft.bench.procfs import cpu_seconds
from splitft.compress import parse_codecs
from splitft.errors import InvalidArgument

logger = logging.getLogger(__name__)

READY = "SPLITFT_SESSIONS_READY"
RESULT_PREFIX = "SPLITFT_SESSIONS_RESULT "
START_DELAY_S = 0.5  # between sending the window and its start, so every device gets it in time
WORKER_TIMEOUT_S = 600


@dataclass
class SessionsBenchConfig(BenchModelConfig):
    """`bench sessions`: the two models and their batch, the session counts, the windows."""

    hidden: int = 256  # smaller than `bench step`'s model: 8 sessions x 4 windows in ~2 minutes
    tokens: int = 64
    threads: int = 1  # torch threads in the edge process
    sessions: tuple[int, ...] = (1, 2, 4, 8)  # concurrent sessions per window, in this order
    seconds: float = 10.0  # length of each measured window
    warmup_steps: int = 2  # per device, before any window
    device_threads: int = 1  # torch threads in each device process
    codec: str = "raw"
    dropout_family: str = "bert"  # the second model, with dropout; "none": only `family`
    dropout: float = 0.1  # its dropout probability (hidden states and attention)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dropout_family not in ("none", "gpt2", "bert", "vit") or not 0.0 < self.dropout < 1.0:
            raise InvalidArgument(
                "dropout_family must be gpt2, bert, vit or none (llama has no dropout modules) "
                "and dropout in (0, 1)"
            )
        self.codec = str(parse_codecs(self.codec))  # canonical; InvalidArgument if unknown
        self.sessions = tuple(int(n) for n in self.sessions)
        if not self.sessions or min(self.sessions) < 1:
            raise InvalidArgument("sessions must be a non-empty list of counts >= 1")
        if self.device_threads < 1 or self.seconds <= 0 or self.warmup_steps < 0:
            raise InvalidArgument("device_threads must be >= 1, seconds > 0 and warmup_steps >= 0")


def bench_models(config: SessionsBenchConfig) -> list[tuple[str, str, float]]:
    """(edge model name, family, dropout) of each model the benchmark runs, in order."""
    models = [("bench", config.family, 0.0)]
    if config.dropout_family != "none":
        models.append(("bench-dropout", config.dropout_family, config.dropout))
    return models


def run_sessions_bench(config: SessionsBenchConfig) -> str:
    """Run the benchmark and return its JSON report."""
    from splitft.local.launch import EdgeProcess
    from splitft.testing.tiny import save_tiny_model

    with tempfile.TemporaryDirectory(prefix="splitft-bench-sessions-") as tmp:
        dirs = {
            name: save_tiny_model(
                family, Path(tmp) / name, layers=config.layers, hidden=config.hidden, dropout=dropout
            ).path
            for name, family, dropout in bench_models(config)
        }
        edge = EdgeProcess(
            [f"{name}={path}" for name, path in dirs.items()],
            threads=config.threads,
            log_path=str(Path(tmp) / "edge.log"),
        )
        results = []
        with edge:
            pid = edge.process.pid if edge.process else None
            for name, family, dropout in bench_models(config):
                spec = {
                    **asdict(config),
                    "family": family,
                    "model_dir": str(dirs[name]),
                    "edge_model": name,
                    "edge": edge.address,
                }
                with DeviceWorkers(spec, max(config.sessions), Path(tmp)) as workers:
                    rounds = [_window(workers, n, config, pid) for n in config.sessions]
                results.append(
                    {"model": name, "family": family, "dropout": dropout, "rounds": _with_ratios(rounds)}
                )
    report = {
        "benchmark": "sessions",
        "config": asdict(config),
        "baseline_sessions": config.sessions[0],
        "models": results,
    }
    return json.dumps(report, indent=2)


class DeviceWorkers:
    """Device processes, each with one open session, driven one window at a time over stdin."""

    def __init__(self, spec: dict[str, Any], count: int, log_dir: Path) -> None:
        self.spec, self.count, self.log_dir = spec, count, log_dir
        self.processes: list[subprocess.Popen[str]] = []

    def __enter__(self) -> DeviceWorkers:
        try:
            for index in range(self.count):
                self.processes.append(self._spawn(index))
            for index in range(self.count):
                self._expect(index, READY)
        except BaseException:
            self.stop()
            raise
        logger.info("bench sessions: %d device processes ready", self.count)
        return self

    def _spawn(self, index: int) -> subprocess.Popen[str]:
        log = open(self.log_dir / f"device-{index}.log", "w")  # noqa: SIM115  (the child keeps it)
        proc = subprocess.Popen(
            [sys.executable, "-m", "splitft.bench.sessions", "--worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        log.close()
        self._send(proc, {**self.spec, "seed": index})
        return proc

    @staticmethod
    def _send(proc: subprocess.Popen[str], message: dict[str, Any]) -> None:
        assert proc.stdin is not None  # opened with PIPE
        proc.stdin.write(json.dumps(message) + "\n")
        proc.stdin.flush()

    def _expect(self, index: int, prefix: str) -> str:
        """The next line of worker `index` that starts with `prefix` (the rest of it)."""
        proc = self.processes[index]
        assert proc.stdout is not None  # opened with PIPE
        for line in _lines(proc.stdout):
            if line.startswith(prefix):
                return line[len(prefix) :].strip()
        log = (self.log_dir / f"device-{index}.log").read_text()[-4000:]
        raise RuntimeError(f"device worker {index} exited (code {proc.poll()}) before {prefix!r}:\n{log}")

    def start(self, count: int, start: float, end: float) -> None:
        """Tell the first `count` devices to train through [start, end]."""
        for proc in self.processes[:count]:
            self._send(proc, {"start": start, "end": end})

    def results(self, count: int) -> list[list[list[float]]]:
        """The first `count` devices' (start, end) of each step of the window."""
        return [json.loads(self._expect(i, RESULT_PREFIX))["steps"] for i in range(count)]

    def stop(self) -> None:
        for proc in self.processes:
            if proc.poll() is None and proc.stdin is not None:
                try:
                    self._send(proc, {"stop": True})
                    proc.stdin.close()
                except OSError:  # already gone
                    pass
        for proc in self.processes:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _lines(stream: IO[str]) -> Iterator[str]:
    return iter(stream.readline, "")


def _window(
    workers: DeviceWorkers, n: int, config: SessionsBenchConfig, edge_pid: int | None
) -> dict[str, Any]:
    logger.info("bench sessions: %d concurrent sessions for %.1f s", n, config.seconds)
    start = time.monotonic() + START_DELAY_S
    workers.start(n, start, start + config.seconds)
    time.sleep(max(0.0, start - time.monotonic()))
    cpu_before = cpu_seconds(edge_pid)
    steps = workers.results(n)
    cpu_after = cpu_seconds(edge_pid)
    wall = time.monotonic() - start
    summary = summarize(steps, start, config.batch * config.tokens)
    if cpu_before is not None and cpu_after is not None:
        summary["edge_cpu_cores"] = round((cpu_after - cpu_before) / wall, 2)
    return {"sessions": n, **summary}


def summarize(per_session: list[list[list[float]]], start: float, tokens_per_step: int) -> dict[str, Any]:
    """Aggregate figures of one window from each session's (start, end) per step."""
    rates = [len(steps) / (steps[-1][1] - start) for steps in per_session if steps]
    durations = [end - begin for steps in per_session for begin, end in steps]
    aggregate = sum(rates)
    return {
        "steps": len(durations),
        "steps_per_s": round(aggregate, 3),
        "tokens_per_s": round(aggregate * tokens_per_step, 1),
        "per_session_steps_per_s": round(aggregate / len(per_session), 3),
        "step_seconds_median": round(statistics.median(durations), 4),
        "step_seconds_p90": round(_percentile(durations, 0.9), 4),
    }


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _with_ratios(rounds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    base = rounds[0]["steps_per_s"]
    return [{**r, "throughput_vs_baseline": round(r["steps_per_s"] / base, 3)} for r in rounds]


# ---------------------------------------------------------------------------------------------
# The worker: one device process, one session.


def train_window(
    model: Any, optimizer: Any, batch: dict[str, torch.Tensor], start: float, end: float
) -> list[list[float]]:
    """Wait for `start`, then train until a step ends at or after `end` (at least one step)."""
    time.sleep(max(0.0, start - time.monotonic()))
    steps: list[list[float]] = []
    while not steps or steps[-1][1] < end:
        began = time.monotonic()
        train_step(model, optimizer, batch)
        steps.append([began, time.monotonic()])
    return steps


def _worker_main() -> int:
    from device_client import EdgeConnection
    from splitft.testing.tiny import make_batch

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    spec = json.loads(sys.stdin.readline())
    torch.set_num_threads(int(spec["device_threads"]))
    torch.manual_seed(int(spec["seed"]))
    batch = make_batch(
        spec["family"], torch.Generator().manual_seed(int(spec["seed"])), spec["batch"], spec["tokens"]
    )
    with EdgeConnection(spec["edge"], insecure=True) as conn:
        config = SessionsBenchConfig(**{f.name: spec[f.name] for f in fields(SessionsBenchConfig)})
        model, optimizer = split_model(
            Path(spec["model_dir"]), conn, config, config.codec, edge_model=spec["edge_model"]
        )
        with model:
            now = time.monotonic()
            for _ in range(int(spec["warmup_steps"])):
                train_window(model, optimizer, batch, now, now)
            _reply(READY)
            for line in _lines(sys.stdin):
                command = json.loads(line)
                if command.get("stop"):
                    break
                steps = train_window(model, optimizer, batch, command["start"], command["end"])
                _reply(RESULT_PREFIX + json.dumps({"steps": steps}))
    return 0


def _reply(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    if "--worker" not in sys.argv[1:]:
        sys.exit("usage: python -m splitft.bench.sessions --worker (driven by `splitft bench sessions`)")
    sys.exit(_worker_main())
