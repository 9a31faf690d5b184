"""`splitft bench generate`: `SplitModel.generate` with key/value caches on both sides vs without.

One edge process (plaintext loopback, batching off) serves a Llama-style model from a config; this
process opens one split session and, per round, generates `new_tokens` greedily from the same
prompts twice, cached (`use_cache=True`: the device and the edge keep the blocks' keys and values;
each step sends one token's activations) and uncached (`use_cache=False`: each step sends the whole
sequence so far), in alternating order (cached first on even rounds). Reports generated tokens per
second (batch x new tokens / seconds) and bytes per generated token up and down for each, as median,
quartiles and extremes over the rounds, with the per-round ratio; both outputs are checked equal.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from device_client import EdgeConnection
from splitft.bench.common import BenchModelConfig, split_model, spread, torch_threads
from splitft.bench.tables import markdown_report, spread_text
from splitft.errors import InvalidArgument
from splitft.local.launch import EdgeProcess
from splitft.testing.tiny import save_tiny_model

MODES = ("cached", "uncached")
QUICK = dict(layers=4, hidden=64, batch=2, tokens=8, new_tokens=6, rounds=2)


@dataclass
class GenerateBenchConfig(BenchModelConfig):
    layers: int = 8
    hidden: int = 256
    batch: int = 4
    tokens: int = 32  # prompt tokens per row
    new_tokens: int = 32
    rounds: int = 5

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.family not in ("llama", "gpt2"):
            raise InvalidArgument(f"bench generate runs causal LMs (llama, gpt2), not {self.family!r}")
        if min(self.new_tokens, self.rounds) < 1:
            raise InvalidArgument("new_tokens and rounds must be >= 1")


def _generate(
    model: Any, prompts: dict[str, torch.Tensor], config: GenerateBenchConfig, cached: bool
) -> dict:
    """One generation: its seconds, bytes each way, and the tokens."""
    before = model.stats
    started = time.perf_counter()
    out = model.generate(
        **prompts, max_new_tokens=config.new_tokens, min_new_tokens=config.new_tokens, do_sample=False,
        use_cache=cached, pad_token_id=0,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    after = model.stats
    return {
        "seconds": seconds,
        "up": after.bytes_sent - before.bytes_sent,
        "down": after.bytes_received - before.bytes_received,
        "tokens": out,
    }


def _summary(runs: list[dict], generated: int) -> dict[str, Any]:
    return {
        "tokens_per_second": spread([generated / r["seconds"] for r in runs], 2),
        "bytes_up_per_token": spread([r["up"] / generated for r in runs], 1),
        "bytes_down_per_token": spread([r["down"] / generated for r in runs], 1),
    }


def run_generate_bench(config: GenerateBenchConfig) -> str:
    """Run the benchmark and return its JSON report."""
    with torch_threads(config.threads), tempfile.TemporaryDirectory() as tmp:
        tiny = save_tiny_model(config.family, Path(tmp) / "model", layers=config.layers, hidden=config.hidden)
        ids = torch.randint(1, 128, (config.batch, config.tokens), generator=torch.Generator().manual_seed(0))
        prompts = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        edge = EdgeProcess([f"bench={tiny.path}"], threads=config.threads, extra_args=("--batching", "off"))
        edge.start()
        try:
            with EdgeConnection(edge.address, insecure=True) as conn:
                model, _ = split_model(tiny.path, conn, config)
                _generate(model, prompts, config, True)  # warm-up, both modes
                _generate(model, prompts, config, False)
                runs: dict[str, list[dict]] = {mode: [] for mode in MODES}
                for round_index in range(config.rounds):
                    order = MODES if round_index % 2 == 0 else MODES[::-1]
                    for mode in order:
                        runs[mode].append(_generate(model, prompts, config, mode == "cached"))
                    if not torch.equal(runs["cached"][-1]["tokens"], runs["uncached"][-1]["tokens"]):
                        raise RuntimeError("cached and uncached generation disagree")  # never expected
                model.close()
        finally:
            edge.stop()
    generated = config.batch * config.new_tokens
    ratios = [u["seconds"] / c["seconds"] for c, u in zip(runs["cached"], runs["uncached"], strict=True)]
    report = {
        "config": asdict(config),
        "load_average": list(os.getloadavg()),
        "cpus": os.cpu_count(),
        "generated_tokens_per_run": generated,
        **{mode: _summary(runs[mode], generated) for mode in MODES},
        "cached_speedup": spread(ratios, 3),
    }
    return json.dumps(report, indent=2)


def markdown_table(report: dict[str, Any]) -> str:
    columns = ("mode", "tokens/s median [q1-q3] (min-max)", "bytes up / token", "bytes down / token")
    rows = [
        (
            mode,
            spread_text(report[mode]["tokens_per_second"]),
            report[mode]["bytes_up_per_token"]["median"],
            report[mode]["bytes_down_per_token"]["median"],
        )
        for mode in MODES
    ]
    speedup, load = report["cached_speedup"], report["load_average"]
    note = (
        f"cached vs uncached, per round: {speedup['median']}x median [{speedup['q1']}-{speedup['q3']}] "
        f"(min {speedup['min']}, max {speedup['max']}); load average {load[0]:.1f} on {report['cpus']} CPUs"
    )
    return markdown_report(columns, rows, [note])
