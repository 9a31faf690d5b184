"""A malicious edge cannot write into the adapter the device saves anything but its trunk adapter.

The edge here is a real gRPC server on loopback whose servicer subclasses the real one and poisons
its ExportAdapter answer; the device is the real SDK.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
import torch

from device_client import EdgeConnection, SplitModel
from edge_server.registry import ModelRegistry
from edge_server.servicer import DataPlaneServicer, add_to_server
from edge_server.sessions import SessionManager
from splitft.errors import FailedPrecondition
from splitft.methods import TaskEdgeConfig
from splitft.testing.tiny import TinyModel, lora_config_for, make_batch
from splitft.v1 import dataplane_pb2 as pb
from splitft.wire.codec import tensor_parts

FAMILY = "llama"  # 4 blocks; device_layers=1, head_layers=1: the trunk is blocks 1 and 2
Poison = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


class PoisonedServicer(DataPlaneServicer):
    """A real servicer whose ExportAdapter answer goes through `poison` first."""

    poison: Poison = staticmethod(lambda state: state)

    def ExportAdapter(self, request, context) -> Iterator[pb.ExportAdapterResponse]:
        session = self._session(request.session_id)
        with session.lock:
            state = self.poison(session.export_adapter())
        for name, tensor in state.items():
            yield from tensor_parts(name, tensor, "raw", self.chunk_bytes, into=pb.ExportAdapterResponse)


@pytest.fixture(scope="module")
def evil_edge(tiny_models: dict[str, TinyModel]) -> Iterator[tuple[str, PoisonedServicer]]:
    registry = ModelRegistry.from_dirs([f"{FAMILY}={tiny_models[FAMILY].path}"])
    servicer = PoisonedServicer(SessionManager(registry), max_tensor_bytes=1 << 24)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    add_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", servicer
    server.stop(0)


def _trained(address: str, tiny: TinyModel, method=None) -> SplitModel:
    conn = EdgeConnection(address, insecure=True)
    kwargs = {"method": method} if method is not None else {"lora_config": lora_config_for(FAMILY)}
    model = SplitModel.from_pretrained(
        tiny.path, edge=conn, model=FAMILY, device_layers=1, head_layers=1, **kwargs
    )
    if method is not None:
        model.calibrate([make_batch(FAMILY, torch.Generator().manual_seed(1))])
    optimizer = model.configure_optimizer(torch.optim.AdamW, lr=1e-2)
    model(**make_batch(FAMILY, torch.Generator().manual_seed(0))).loss.backward()
    optimizer.step()
    return model


def _with(key: str, value: Callable[[dict[str, torch.Tensor]], torch.Tensor]) -> Poison:
    return lambda state: {**state, key: value(state)}


def _reshaped(key: str) -> Poison:
    return lambda state: {**state, key: torch.zeros(state[key].shape[0] + 1, *state[key].shape[1:])}


LORA_A = "base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"
POISONS = {
    # a device-side base weight: peft would load it over the device's embeddings
    "base_model.model.model.embed_tokens.weight": _with(
        "base_model.model.model.embed_tokens.weight", lambda s: torch.zeros(128, 32)
    ),
    # an adapter tensor of a DEVICE block (block 0): the edge must not set the device's adapter
    "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": _with(
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", lambda s: s[LORA_A].clone()
    ),
    # a base weight inside a trunk block
    "base_model.model.model.layers.1.self_attn.q_proj.weight": _with(
        "base_model.model.model.layers.1.self_attn.q_proj.weight", lambda s: torch.zeros(32, 32)
    ),
    # a LoRA tensor of a module the config does not target
    "base_model.model.model.layers.1.mlp.up_proj.lora_A.weight": _with(
        "base_model.model.model.layers.1.mlp.up_proj.lora_A.weight", lambda s: torch.zeros(4, 32)
    ),
    # a trunk adapter tensor of the wrong shape
    LORA_A: _reshaped(LORA_A),
}


@pytest.mark.parametrize("key", list(POISONS))
def test_device_refuses_a_poisoned_lora_export(evil_edge, tiny_models, tmp_path: Path, key: str) -> None:
    address, servicer = evil_edge
    model = _trained(address, tiny_models[FAMILY])
    try:
        servicer.poison = staticmethod(POISONS[key])
        with pytest.raises(FailedPrecondition, match=key.replace(".", r"\.")):
            model.save_adapter(tmp_path / "adapter")
        assert not (tmp_path / "adapter" / "adapter_model.safetensors").exists()
        servicer.poison = staticmethod(lambda state: state)
        saved = model.save_adapter(tmp_path / "adapter")  # the honest answer is still accepted
        assert saved.exists()
    finally:
        servicer.poison = staticmethod(lambda state: state)
        model.close()


def test_device_refuses_a_dense_weight_among_sparse_deltas(evil_edge, tiny_models, tmp_path: Path) -> None:
    address, servicer = evil_edge
    model = _trained(address, tiny_models[FAMILY], method=TaskEdgeConfig(budget_fraction=0.01))
    key = "model.layers.1.self_attn.q_proj.weight"
    try:
        assert model.adapter_state_dict()  # the honest sparse export is accepted
        servicer.poison = staticmethod(_with(key, lambda s: torch.zeros(32, 32)))
        with pytest.raises(FailedPrecondition, match=key.replace(".", r"\.")):
            model.adapter_state_dict()
    finally:
        servicer.poison = staticmethod(lambda state: state)
        model.close()
