"""The edge as a real process: `splitft edge serve` starts, serves a training step, and exits 0 on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from device_client import EdgeConnection
from splitft.local.launch import free_port
from splitft.testing.tiny import TinyModel, make_batch
from tests.support.split import split_llama

pytestmark = pytest.mark.slow

HOST = "127.0.0.1"
START_TIMEOUT = 90.0  # importing torch and transformers in a fresh process is slow on a busy 2-core box
STOP_TIMEOUT = 15.0


@dataclass
class RunningEdge:
    address: str
    process: subprocess.Popen[bytes]
    log: Path  # the process's stdout and stderr


def _serve_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "splitft.cli", "edge", "serve", *args]


def _env() -> dict[str, str]:
    # wide console so the CLI's log lines are not wrapped mid-message
    return dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="200")


def _log(path: Path) -> str:
    return path.read_text(errors="replace")[-4000:] if path.exists() else ""


def _wait_serving(address: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"edge exited with {process.returncode} before serving:\n{_log(log)}")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass  # not listening yet
            time.sleep(0.2)
    pytest.fail(f"edge not SERVING after {START_TIMEOUT:.0f} s:\n{_log(log)}")


@pytest.fixture
def edge_process(tiny_models: dict[str, TinyModel], tmp_path: Path) -> Iterator[RunningEdge]:
    port = free_port(HOST)
    log = tmp_path / "edge.log"
    command = _serve_command(
        "--model-dir",
        f"llama={tiny_models['llama'].path}",
        "--host",
        HOST,
        "--port",
        str(port),
        "--insecure",
        "--session-ttl",
        "60",
    )
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=_env())
    try:
        _wait_serving(f"{HOST}:{port}", process, log)
        yield RunningEdge(f"{HOST}:{port}", process, log)
    finally:
        if process.poll() is None:  # only if the test did not stop it itself
            process.kill()
            process.wait()


def test_serves_a_step_and_stops_cleanly_on_sigterm(
    tiny_models: dict[str, TinyModel], edge_process: RunningEdge
) -> None:
    address, process, log = edge_process.address, edge_process.process, edge_process.log
    with EdgeConnection(address, insecure=True) as conn:
        with split_llama(tiny_models["llama"], conn, seed=0) as model:
            optimizer = model.configure_optimizer(torch.optim.AdamW, lr=1e-2)
            loss = model(**make_batch("llama", torch.Generator().manual_seed(0))).loss
            assert torch.isfinite(loss)
            loss.backward()
            optimizer.step()
            assert model.stats.steps == 1
    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"edge still running {STOP_TIMEOUT:.0f} s after SIGTERM:\n{_log(log)}")
    assert code == 0, _log(log)


def test_refuses_plaintext_without_insecure(tiny_models: dict[str, TinyModel]) -> None:
    command = _serve_command(
        "--model-dir", f"llama={tiny_models['llama'].path}", "--host", HOST, "--port", str(free_port(HOST))
    )
    result = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=START_TIMEOUT)
    output = " ".join((result.stdout + result.stderr).split())  # the log handler may wrap long lines
    assert result.returncode != 0
    assert "--insecure" in output and "TLS" in output, output


def test_free_port_never_hands_out_a_port_twice() -> None:
    ports = [free_port(HOST) for _ in range(50)]
    assert len(set(ports)) == len(ports)


def test_edge_secret_comes_from_the_environment_even_with_a_leading_dash(monkeypatch) -> None:
    """Secrets travel in SPLITFT_EDGE_SECRET, not argv (where `-abc` would read as an option)."""
    from splitft.cli import build_parser

    monkeypatch.setenv("SPLITFT_EDGE_SECRET", "-starts-with-a-dash")
    args = build_parser().parse_args(["edge", "serve", "--model-dir", "m", "--control-plane", "http://cp"])
    assert args.edge_secret == "-starts-with-a-dash"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        pytest.param(("--device", "tpu"), "--device must be one of auto, cpu, cuda", id="unknown-device"),
        pytest.param(
            ("--device", "cuda"),
            "CUDA is not available here",
            id="cuda-without-gpu",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU"),
        ),
        pytest.param(("--dtype", "int8"), "invalid choice: 'int8'", id="unknown-dtype"),
    ],
)
def test_a_placement_the_machine_lacks_is_a_usage_error(tiny_models, flags, message) -> None:
    command = _serve_command(
        "--model-dir", f"llama={tiny_models['llama'].path}", "--insecure", "--port", "0", *flags
    )
    result = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=START_TIMEOUT)
    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 2, output
    assert message in output, output
