"""The device's peak memory per variant for `splitft bench quantize`, from `bench memory`'s worker.

Every figure is a fresh worker process training the device side of `bench step`'s model against
one fp32 edge (the edge's own weights do not change the device's memory). Two measures, because
they answer different questions:

* `rss`: the kernel's peak RSS over the worker's baseline (what the device's OS sees, glibc's cache
  of freed blocks included);
* `alloc`: the peak of torch's CPU allocator plus the weights still read from the checkpoint's
  file mapping (fp32 spans compute on the mapped pages; a quantized span holds its own copy), so
  what the process needs without the allocator's cache.

Each at every shape of `memory_shapes` ("BATCHxTOKENS"): at `bench step`'s batch the saved
activations dominate the device's memory; at a small batch its weights do, which is where
quantizing them can show.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from splitft.bench.common import BenchModelConfig
from splitft.bench.memory import MODE_ENV, RESULT_PREFIX, WORKER_TIMEOUT_S, MemoryBenchConfig
from splitft.bench.quantize_variants import LABELS, dtype_of, order, parse_shape, quantize_of, with_ratios
from splitft.bench.worker import run_worker
from splitft.local.launch import EdgeProcess
from splitft.testing.tiny import save_tiny_model

if TYPE_CHECKING:
    from splitft.bench.quantize import QuantizeBenchConfig

logger = logging.getLogger(__name__)

MIB = 1024 * 1024


def device_peaks(bench: Any, config: QuantizeBenchConfig, root: Path) -> dict[str, Any]:
    """{shape: {mode: {label: spread in MiB with vs_fp32}}}."""
    warm = save_tiny_model(config.family, root / "warmup", layers=2, hidden=32)
    memory = MemoryBenchConfig(**{k: getattr(config, k) for k in asdict(BenchModelConfig())})
    base = {
        **asdict(memory),
        "steps": config.memory_steps,
        "model_dir": str(bench.path),
        "warmup_dir": str(warm.path),
        "model_name": "bench",
        "warmup_name": "warmup",
        "model_class": bench.model_class.__name__,
        "side": "device",
    }
    report: dict[str, Any] = {}
    with EdgeProcess([f"bench={bench.path}", f"warmup={warm.path}"], threads=config.threads) as plain:
        base["edge"] = plain.address
        for shape in config.memory_shapes:
            batch, tokens = parse_shape(shape)
            report[shape] = {
                mode: _peaks({**base, "batch": batch, "tokens": tokens, "mode": mode}, config)
                for mode in config.memory_modes
            }
    return report


def _peaks(spec: dict[str, Any], config: QuantizeBenchConfig) -> dict[str, Any]:
    peaks: dict[str, list[float]] = {s: [] for s in config.schemes}
    for r in range(config.memory_rounds):
        for scheme in order(config.schemes, r):
            where = f"{spec['batch']}x{spec['tokens']} {spec['mode']}"
            logger.info("bench quantize: device peak memory, %s, round %d, %s", where, r + 1, LABELS[scheme])
            result = run_worker(
                "splitft.bench.memory",
                {**spec, "quantize": quantize_of(scheme), "dtype": dtype_of(scheme)},
                prefix=RESULT_PREFIX,
                label=f"memory worker {scheme}",
                timeout=WORKER_TIMEOUT_S,
                env=MODE_ENV.get(spec["mode"], {}),
            )
            peaks[scheme].append(_peak_bytes(result) / MIB)
    return with_ratios(peaks, digits=2)


def _peak_bytes(result: dict[str, Any]) -> int:
    if result["mode"] == "alloc":
        return int(result["torch_train_peak_bytes"] + result["file_mapped_weights_bytes"])
    return int(result["train_peak_delta_bytes"])
