"""Placement options: what this machine can run is resolved, the rest refused naming what it has;
accelerate's device map spreads whole blocks over GPUs (planned on `meta`: no GPU needed) and a
trunk that does not fit is refused instead of offloaded."""

from __future__ import annotations

import argparse

import pytest
import torch

from splitft.cli.args import device_memory
from splitft.errors import FailedPrecondition, InvalidArgument
from splitft.model.loading import build_meta_model, edge_view, read_config
from splitft.model.placement import (
    Placement,
    claim_cuda_autograd,
    plan_device_map,
    release_cuda_autograd,
    resolve_device,
    resolve_dtype,
)
from splitft.testing.tiny import save_tiny_model


def test_cpu_and_auto_resolve_here() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert Placement("cpu", "bfloat16").resolve().dtype is torch.bfloat16


@pytest.mark.skipif(torch.cuda.is_available(), reason="refusing CUDA needs a machine without a GPU")
@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_cuda_without_a_gpu_is_refused_naming_what_is_available(name: str) -> None:
    with pytest.raises(InvalidArgument, match=r"CUDA is not available here .*available: cpu"):
        resolve_device(name)


@pytest.mark.parametrize("name", ["tpu", "gpu", "cuda:x", ""])
def test_unknown_devices_are_refused(name: str) -> None:
    with pytest.raises(InvalidArgument, match="--device must be one of auto, cpu, cuda"):
        resolve_device(name)


def test_unknown_dtypes_and_maps_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="--dtype must be one of float32, bfloat16, float16"):
        resolve_dtype("int8", torch.device("cpu"))
    with pytest.raises(InvalidArgument, match="--device-map must be one of auto, balanced"):
        Placement("cpu", "float32", "sequential").resolve()


def test_a_half_precision_the_device_cannot_train_in_is_refused(monkeypatch) -> None:
    """The dtype check runs a linear layer, a layer norm and their backward; a failure among them
    (as fp16 on CPUs of older torch builds) becomes the refusal's reason."""

    def unsupported(*args, **kwargs):
        raise RuntimeError("\"addmm_impl_cpu_\" not implemented for 'Half'")

    monkeypatch.setattr(torch.nn.functional, "linear", unsupported)
    with pytest.raises(
        InvalidArgument, match=r"--dtype float16 is not supported on cpu: .*addmm.*use float32"
    ):
        resolve_dtype("float16", torch.device("cpu"))


@pytest.fixture(scope="module")
def trunk_on_meta(tmp_path_factory):
    tiny = save_tiny_model("llama", tmp_path_factory.mktemp("llama") / "llama", layers=6)
    config, family = read_config(tiny.path)
    root = build_meta_model(config, family)
    edge_view(root, family, 1, len(family.blocks(root)))
    return root, type(family.blocks(root)[-1]).__name__


def _block_bytes(root) -> int:
    return sum(p.numel() * 4 for p in root.model.layers[1].parameters())


def _spread(root, block_class: str, strategy: str, per_gpu: int) -> dict:
    placement = Placement("cpu", "float32", strategy, {"0": per_gpu, "cuda:1": per_gpu}).resolve()
    return plan_device_map(root, block_class, placement)


def test_a_balanced_map_spreads_whole_blocks_over_two_gpus(trunk_on_meta) -> None:
    root, block_class = trunk_on_meta
    device_map = _spread(root, block_class, "balanced", 10 * _block_bytes(root))
    layers = {k: v for k, v in device_map.items() if k.startswith("model.layers.")}
    assert set(layers.values()) == {0, 1}  # both GPUs hold blocks
    assert all(k.count(".") == 2 for k in layers)  # whole blocks, never a block's own modules


def test_a_trunk_that_does_not_fit_the_gpus_is_refused_not_offloaded(trunk_on_meta) -> None:
    root, block_class = trunk_on_meta
    with pytest.raises(InvalidArgument, match=r"do not fit the device map over \['0', '1'\].*offload to"):
        _spread(root, block_class, "auto", _block_bytes(root) // 2)


def test_device_memory_flag_parses_per_device_sizes() -> None:
    assert device_memory("0=1G, cuda:1=512M") == {"0": 1 << 30, "cuda:1": 512 << 20}
    for bad in ("0", "=1G", ",", "0=lots"):
        with pytest.raises(argparse.ArgumentTypeError):
            device_memory(bad)


def test_a_device_and_an_edge_on_one_gpu_in_one_process_are_refused() -> None:
    """No GPU needed: the guard only reads the devices' names."""
    gpu = torch.device("cuda", 0)
    claim_cuda_autograd("edge", gpu)
    try:
        claim_cuda_autograd("edge", gpu)  # a second edge (or model) on it: no deadlock between them
        with pytest.raises(FailedPrecondition, match=r"the device and the edge both on cuda:0 .*own process"):
            claim_cuda_autograd("device", gpu)
        claim_cuda_autograd("device", "cuda:1")  # another GPU: another autograd thread
        release_cuda_autograd("device", "cuda:1")
        claim_cuda_autograd("device", "cpu")  # the CPU runs backwards in the calling thread
    finally:
        release_cuda_autograd("edge", gpu)
        release_cuda_autograd("edge", gpu)
    claim_cuda_autograd("device", gpu)  # the edge is gone
    release_cuda_autograd("device", gpu)
