"""`splitft bench step`: one training step in one process vs split over loopback, side by side.

Three runs per round: the whole peft model in one process, split over plaintext gRPC, and split
over mutual TLS with session tokens (each edge in its own process).

Both sides of each pair run the same model, batch and torch thread budget in the same run, pairs are
interleaved, and the median ratio is reported, because this machine is shared and noisy.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from peft import get_peft_model

from device_client import EdgeConnection, SplitModel
from splitft.codec import CODECS
from splitft.errors import InvalidArgument
from splitft.launch import EdgeProcess, LocalPki
from splitft.tiny import lora_config_for, make_batch, save_tiny_model


@dataclass
class StepBenchConfig:
    family: str = "llama"
    layers: int = 8
    hidden: int = 256
    batch: int = 8
    tokens: int = 64
    repeats: int = 10
    threads: int = 1  # torch threads in each process (device, edge, and the one-process run)
    device_layers: int = 1
    head_layers: int = 1

    def __post_init__(self) -> None:
        if self.repeats < 1 or self.batch < 1 or self.tokens < 2 or self.threads < 1:
            raise InvalidArgument("repeats, batch and threads must be >= 1 and tokens >= 2")


def _step(model, optimizer, batch) -> float:
    started = time.perf_counter()
    model(**batch).loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return time.perf_counter() - started


def _param_bytes(params) -> tuple[int, int]:
    params = list(params)
    return sum(p.numel() for p in params), sum(p.numel() * p.element_size() for p in params)


def run_step_bench(config: StepBenchConfig) -> str:
    """Run the benchmark and return its JSON report."""
    torch.set_num_threads(config.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tiny = save_tiny_model(config.family, Path(tmp) / "model", layers=config.layers, hidden=config.hidden)
        batch = make_batch(config.family, torch.Generator().manual_seed(0), config.batch, config.tokens)
        torch.manual_seed(0)
        local = get_peft_model(tiny.model_class.from_pretrained(tiny.path), lora_config_for(config.family))
        local_opt = torch.optim.AdamW([p for p in local.parameters() if p.requires_grad], lr=1e-3)
        secure = LocalPki.create(Path(tmp) / "pki", device="bench")
        models = [f"bench={tiny.path}"]
        with (
            EdgeProcess(models, threads=config.threads) as plain_edge,
            EdgeProcess(
                models,
                threads=config.threads,
                tls=secure.tls,
                extra_args=["--token-issuer-key", str(secure.issuer_pub)],
            ) as tls_edge,
        ):
            with (
                EdgeConnection(plain_edge.address, insecure=True) as plain_conn,
                secure.connect(tls_edge.address, session="bench-tls", model="bench") as tls_conn,
            ):
                plain = _split_model(tiny.path, plain_conn, config, "raw")
                over_tls = _split_model(tiny.path, tls_conn, config, "raw")
                runs = {"local": (local, local_opt), "split_insecure": plain, "split_mtls": over_tls}
                timing = _interleaved(runs, batch, config.repeats)
                share = _device_share(local, plain[0])
                plain[0].close()
                over_tls[0].close()
            wire = {
                codec: _bytes_per_step(tiny.path, plain_edge.address, codec, config, batch)
                for codec in CODECS
            }
    report = {
        "benchmark": "step",
        "config": asdict(config),
        "step_seconds": timing,
        "bytes_per_step": wire,
        "device_share": share,
    }
    return json.dumps(report, indent=2)


def _split_model(path: Path, conn: EdgeConnection, config: StepBenchConfig, codec: str):
    model = SplitModel.from_pretrained(
        path,
        edge=conn,
        model="bench",
        device_layers=config.device_layers,
        head_layers=config.head_layers,
        codec=codec,
        lora_config=lora_config_for(config.family),
    )
    return model, model.configure_optimizer(torch.optim.AdamW, lr=1e-3)


def _interleaved(runs: dict[str, tuple], batch, repeats: int) -> dict[str, float]:
    """Time each run once per round, rounds interleaved; report medians and per-round ratios."""
    for _ in range(2):  # warm-up: allocator, first-call overheads, gRPC connection and TLS handshake
        for model, opt in runs.values():
            _step(model, opt, batch)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, (model, opt) in runs.items():
            times[name].append(_step(model, opt, batch))
    report: dict[str, float] = {f"{name}_median": round(statistics.median(t), 5) for name, t in times.items()}
    for a, b in (("split_insecure", "local"), ("split_mtls", "local"), ("split_mtls", "split_insecure")):
        ratios = [x / y for x, y in zip(times[a], times[b], strict=True)]
        report[f"ratio_{a}_vs_{b}"] = round(statistics.median(ratios), 3)
    report["rounds"] = repeats
    return report


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


def _bytes_per_step(path, address: str, codec: str, config: StepBenchConfig, batch) -> dict[str, int | float]:
    with EdgeConnection(address, insecure=True) as conn:
        model, opt = _split_model(path, conn, config, codec)
        _step(model, opt, batch)
        before = model.stats
        _step(model, opt, batch)
        after = model.stats
        model.close()
    up, down = after.bytes_sent - before.bytes_sent, after.bytes_received - before.bytes_received
    return {"up": up, "down": down, "total": up + down}
