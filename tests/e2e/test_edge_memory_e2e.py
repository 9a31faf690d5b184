"""`splitft edge serve --memory-limit` as a real process registered with a real control plane: its
registration and heartbeats carry the limit, the real free memory and per-model capacity, and the
free memory drops while a session is open and comes back when it closes."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from device_client import EdgeConnection
from splitft.local.launch import ControlProcess, EdgeProcess
from splitft.security.tokens import issue_token, load_private_key
from splitft.testing.tiny import TinyModel
from tests.support.control_fixtures import EDGE_SECRET, OPERATOR_KEY, bearer
from tests.support.split import split_llama

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
LIMIT = 64 << 20


@pytest.fixture(scope="module")
def control_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("control")


@pytest.fixture(scope="module")
def control(control_dir: Path) -> Iterator[ControlProcess]:
    env = {"SPLITFT_HEARTBEAT_INTERVAL": "0.3"}
    with ControlProcess(control_dir, operator_key=OPERATOR_KEY, edge_secret=EDGE_SECRET, env=env) as process:
        yield process


def _edge(control: ControlProcess) -> dict[str, Any]:
    edges = httpx.get(f"{control.url}/v1/edges", headers=bearer(OPERATOR_KEY), timeout=10).json()
    return next(e for e in edges if e["name"] == "mem-edge")


def _wait(control: ControlProcess, until: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while not until(edge := _edge(control)):
        assert time.monotonic() < deadline, f"the edge never reported what was expected: {edge['capacity']}"
        time.sleep(0.2)
    return edge


def test_heartbeats_report_real_free_memory_and_capacity(
    control: ControlProcess, control_dir: Path, tiny_models: dict[str, TinyModel]
) -> None:
    tiny = tiny_models["llama"]
    args = ["--control-plane", control.url, "--edge-name", "mem-edge", "--memory-limit", "64M"]
    process = EdgeProcess([f"llama={tiny.path}"], extra_args=args, env={"SPLITFT_EDGE_SECRET": EDGE_SECRET})
    with process:
        edge = _edge(control)
        capacity = edge["capacity"]
        assert capacity["memory_limit_bytes"] == LIMIT and capacity["memory_free_bytes"] == LIMIT
        model = capacity["models"]["llama"]
        assert model["session_bytes"] > 0 and model["sessions_free"] == LIMIT // model["session_bytes"]
        key = load_private_key(control_dir / "issuer.key")  # the control plane's token issuer
        token = issue_token(key, session="mem-session", device="phone", model="llama", edge=edge["id"])
        with EdgeConnection(process.address, insecure=True, token=token) as conn:
            conn.wait_ready(30)
            with split_llama(tiny, conn, seed=0, batch_shape=(4, 12)):
                busy = _wait(control, lambda e: e["active_sessions"] == 1)
                assert busy["capacity"]["memory_free_bytes"] < LIMIT
                assert busy["capacity"]["models"]["llama"]["sessions_free"] <= model["sessions_free"]
        _wait(control, lambda e: e["capacity"]["memory_free_bytes"] == LIMIT)
