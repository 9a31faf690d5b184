"""Synthetic devices for `splitft bench edge`: the real protocol, none of the device's compute.

Each synthetic device is its own process. It opens one session on each edge it is given (the SDK's
`EdgeConnection`, `OpenSession` with a trunk LoRA, `ConfigureOptimizer`, then the session's `Train`
stream through `RemoteTrunk`) and trains in a loop: a forward of activations of the right shape
(random, drawn once), a backward of a gradient of the output's shape (random, drawn once), and an
optimizer `Step` on the edge. It runs no blocks, embeddings or head of its own, so what it measures
is the edge: its trunk passes, its transport and its session handling.

The processes are forked from a forkserver that has imported torch, gRPC and the SDK once, so that
32 of them start in seconds and share those pages; each is driven over a pipe, one command at a
time (`DevicePool`).
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import torch

from device_client.connection import EdgeConnection
from device_client.trunk import RemoteTrunk
from splitft.compress import parse_codecs
from splitft.v1 import dataplane_pb2 as pb

logger = logging.getLogger(__name__)

REPLY_TIMEOUT_S = 900.0  # a command's answer; opening 32 sessions of the largest shape takes seconds
MAX_ERROR_SAMPLES = 3  # error messages kept per device and command


@dataclass
class DeviceSpec:
    """What every synthetic device of one (model, shape) group does; `seed` differs per device."""

    edges: dict[str, str]  # a name per edge ("on", "off") -> HOST:PORT
    model: str  # the model's name on the edges
    model_type: str  # what OpenSession checks against the edge's model
    num_layers: int
    hidden_size: int
    device_layers: int
    head_layers: int
    lora_config_json: str  # the trunk LoRA every session trains
    batch: int
    tokens: int
    warmup_steps: int = 2  # per session, before any window
    lr: float = 1e-4  # small: random gradients only need to keep the adapter's numbers tame
    seed: int = 0


@dataclass
class WindowResult:
    """One device's steps in one window: (start, end) of each completed step, and what failed."""

    steps: list[tuple[float, float]] = field(default_factory=list)
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)

    def failed(self, exc: BaseException) -> None:
        self.errors += 1
        if len(self.error_samples) < MAX_ERROR_SAMPLES:
            self.error_samples.append(f"{type(exc).__name__}: {exc}")


class SyntheticDevice:
    """One device's sessions (one per edge) and its fixed activations and gradient."""

    def __init__(self, spec: DeviceSpec) -> None:
        self.spec = spec
        generator = torch.Generator().manual_seed(spec.seed)
        shape = (spec.batch, spec.tokens, spec.hidden_size)
        self.hidden = torch.randn(shape, generator=generator)
        self.grad = torch.randn(shape, generator=generator)
        self.extras = {"attention_mask": torch.ones(spec.batch, spec.tokens, dtype=torch.long)}
        self.trunks: dict[str, RemoteTrunk] = {}
        self.connections: list[EdgeConnection] = []

    def open(self) -> WindowResult:
        """Open a session on every edge and warm each up; failures are counted, not raised."""
        result = WindowResult()
        for name, address in self.spec.edges.items():
            try:
                self.trunks[name] = self._open_one(address)
                for _ in range(self.spec.warmup_steps):
                    self.step(self.trunks[name])
            except Exception as exc:  # noqa: BLE001  (reported to the parent, which counts it)
                result.failed(exc)
        return result

    def _open_one(self, address: str) -> RemoteTrunk:
        spec = self.spec
        conn = EdgeConnection(address, insecure=True)
        self.connections.append(conn)
        codecs = parse_codecs("raw")
        opened = conn.call(
            "OpenSession",
            pb.OpenSessionRequest(
                model=spec.model,
                device_layers=spec.device_layers,
                head_layers=spec.head_layers,
                codec=str(codecs),
                trunk_lora=True,
                lora_config_json=spec.lora_config_json,
                seed=spec.seed,
                model_type=spec.model_type,
                num_layers=spec.num_layers,
                hidden_size=spec.hidden_size,
                # Its real shape, so memory admission reserves what it will keep, not the default.
                batch_size=spec.batch,
                sequence_length=spec.tokens,
            ),
        )
        trunk = RemoteTrunk(conn, opened, codecs, seed=spec.seed)
        trunk.configure_optimizer("AdamW", {"lr": spec.lr})
        return trunk

    def step(self, trunk: RemoteTrunk) -> None:
        """Forward, backward and the edge's optimizer step, as the SDK's `SplitOptimizer` does them."""
        forward_id, _ = trunk.forward(
            self.hidden, self.extras, training=True, requires_grad=True, need_input_grad=True
        )
        trunk.backward(forward_id, self.grad)
        trunk.step({"lr": self.spec.lr}, 1.0)
        trunk.mark_zero_grad()

    def run(self, name: str, start: float, end: float) -> WindowResult:
        """Wait for `start`, then step on edge `name` until a step ends at or after `end`. A failed
        step ends the window for this device (its session may be gone)."""
        result = WindowResult()
        trunk = self.trunks.get(name)
        if trunk is None:
            result.failed(RuntimeError(f"no open session on edge {name!r}"))
            return result
        time.sleep(max(0.0, start - time.monotonic()))
        while not result.steps or result.steps[-1][1] < end:
            began = time.monotonic()
            try:
                self.step(trunk)
            except Exception as exc:  # noqa: BLE001  (counted; the parent reports errors)
                result.failed(exc)
                break
            result.steps.append((began, time.monotonic()))
        return result

    def close(self) -> None:
        """Close every session and connection (errors here are logged: the window is over)."""
        for trunk in self.trunks.values():
            try:
                trunk.close()
            except Exception:  # noqa: BLE001
                logger.warning("closing session %s failed", trunk.session_id, exc_info=True)
        for conn in self.connections:
            conn.close()
        self.trunks, self.connections = {}, []


def device_main(pipe: Connection) -> None:
    """A synthetic device process: answer the parent's commands until it says stop."""
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    device: SyntheticDevice | None = None
    while True:
        command, payload = pipe.recv()
        if command == "stop":
            break
        try:
            device, reply = _handle(device, command, payload)
        except Exception as exc:  # noqa: BLE001  (the parent raises it with this device's index)
            reply = RuntimeError(f"{command}: {type(exc).__name__}: {exc}")
        pipe.send(reply)
    if device is not None:
        device.close()


def _handle(device: SyntheticDevice | None, command: str, payload: Any) -> tuple[SyntheticDevice | None, Any]:
    if command == "open":
        if device is not None:  # a group that failed half-way did not close it
            device.close()
        device = SyntheticDevice(DeviceSpec(**payload))
        return device, device.open()
    if device is None:
        raise RuntimeError("no sessions open: send 'open' first")
    if command == "run":
        return device, device.run(*payload)
    if command == "close":
        device.close()
        return None, None
    raise RuntimeError(f"unexpected command {command!r}")


class DevicePool:
    """`count` synthetic device processes, driven over a pipe each; a command goes to the first n."""

    def __init__(self, count: int) -> None:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
        self.pipes: list[Connection] = []
        self.processes: list[Any] = []
        for index in range(count):
            mine, theirs = context.Pipe()
            process = context.Process(target=device_main, args=(theirs,), name=f"device-{index}", daemon=True)
            process.start()
            theirs.close()
            self.pipes.append(mine)
            self.processes.append(process)

    @property
    def pids(self) -> list[int]:
        """The device processes' ids (for their CPU time)."""
        return [p.pid for p in self.processes]

    def open(self, spec: DeviceSpec, n: int) -> list[WindowResult]:
        """The first n devices open their sessions (seed = index) and warm up, one device at a
        time: what the edges hold afterwards is the sessions' state, not transients of n warm-ups
        at once."""
        results = []
        for index in range(n):
            self.pipes[index].send(("open", {**vars(spec), "seed": index}))
            results.append(self._reply(index, "open"))
        return results

    def run(
        self, n: int, name: str, start: float, end: float, at_start: Callable[[], None] = lambda: None
    ) -> list[WindowResult]:
        """The first n devices train on edge `name` through [start, end]; `at_start` is called here
        at `start` (e.g. to read the edge's CPU time), while they train."""
        for pipe in self.pipes[:n]:
            pipe.send(("run", (name, start, end)))
        time.sleep(max(0.0, start - time.monotonic()))
        at_start()
        return [self._reply(index, "run") for index in range(n)]

    def close(self, n: int) -> None:
        """The first n devices close their sessions."""
        self._command("close", [None] * n)

    def _command(self, command: str, payloads: list[Any]) -> list[Any]:
        for pipe, payload in zip(self.pipes, payloads, strict=False):
            pipe.send((command, payload))
        return [self._reply(index, command) for index in range(len(payloads))]

    def _reply(self, index: int, command: str) -> Any:
        pipe = self.pipes[index]
        if not pipe.poll(REPLY_TIMEOUT_S):
            raise TimeoutError(f"synthetic device {index} did not answer {command!r}")
        reply = pipe.recv()
        if isinstance(reply, BaseException):
            raise RuntimeError(f"synthetic device {index}: {reply}")
        return reply

    def stop(self) -> None:
        """Stop every device process (they close their sessions first)."""
        for pipe in self.pipes:
            try:
                pipe.send(("stop", None))
            except OSError:  # already gone
                pass
        for process in self.processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
                process.join()

    def __enter__(self) -> DevicePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
