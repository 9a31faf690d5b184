"""`splitft bench step`: one training step in one process vs split over loopback, side by side.

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

from splitft.codec import CODECS
from splitft.errors import InvalidArgument
from splitft.launch import EdgeProcess
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
    from device_client import EdgeConnection, SplitModel

    torch.set_num_threads(config.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tiny = save_tiny_model(
            config.family, Path(tmp) / config.family, layers=config.layers, hidden=config.hidden
        )
        batch = make_batch(config.family, torch.Generator().manual_seed(0), config.batch, config.tokens)
        torch.manual_seed(0)
        local = get_peft_model(tiny.model_class.from_pretrained(tiny.path), lora_config_for(config.family))
        local_opt = torch.optim.AdamW([p for p in local.parameters() if p.requires_grad], lr=1e-3)
        with EdgeProcess([f"bench={tiny.path}"], threads=config.threads) as edge:
            with EdgeConnection(edge.address, insecure=True) as conn:
                split = SplitModel.from_pretrained(
                    tiny.path,
                    edge=conn,
                    model="bench",
                    device_layers=config.device_layers,
                    head_layers=config.head_layers,
                    lora_config=lora_config_for(config.family),
                )
                split_opt = split.configure_optimizer(torch.optim.AdamW, lr=1e-3)
                timing = _interleaved(local, local_opt, split, split_opt, batch, config.repeats)
                share = _device_share(local, split)
                split.close()
            wire = {codec: _bytes_per_step(tiny.path, edge.address, codec, config, batch) for codec in CODECS}
    report = {
        "benchmark": "step",
        "config": asdict(config),
        "step_seconds": timing,
        "bytes_per_step": wire,
        "device_share": share,
    }
    return json.dumps(report, indent=2)


def _interleaved(local, local_opt, split, split_opt, batch, repeats: int) -> dict[str, float]:
    for _ in range(2):  # warm-up: allocator, first-call overheads, gRPC connection
        _step(local, local_opt, batch)
        _step(split, split_opt, batch)
    local_times, split_times = [], []
    for _ in range(repeats):
        local_times.append(_step(local, local_opt, batch))
        split_times.append(_step(split, split_opt, batch))
    ratios = [s / loc for s, loc in zip(split_times, local_times, strict=True)]
    return {
        "local_median": round(statistics.median(local_times), 5),
        "split_median": round(statistics.median(split_times), 5),
        "ratio_median": round(statistics.median(ratios), 3),
        "ratio_min": round(min(ratios), 3),
        "ratio_max": round(max(ratios), 3),
        "pairs": repeats,
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


def _bytes_per_step(path, address: str, codec: str, config: StepBenchConfig, batch) -> dict[str, int | float]:
    from device_client import EdgeConnection, SplitModel

    with EdgeConnection(address, insecure=True) as conn:
        model = SplitModel.from_pretrained(
            path,
            edge=conn,
            model="bench",
            device_layers=config.device_layers,
            head_layers=config.head_layers,
            codec=codec,
            lora_config=lora_config_for(config.family),
        )
        opt = model.configure_optimizer(torch.optim.AdamW, lr=1e-3)
        _step(model, opt, batch)
        before = model.stats
        _step(model, opt, batch)
        after = model.stats
        model.close()
    up, down = after.bytes_sent - before.bytes_sent, after.bytes_received - before.bytes_received
    return {"up": up, "down": down, "total": up + down}
