"""Each side holds only its spans: the device never has trunk weights, the edge never embeddings or head."""

from __future__ import annotations

import re

import pytest
from torch import nn

from device_client import EdgeConnection, SplitModel
from edge_server import EdgeServer
from splitft.model.families import FAMILIES, Family
from splitft.testing.tiny import FAMILY_NAMES, TinyModel, lora_config_for

K, J, L = 1, 1, 4  # device blocks before the trunk, after it, and blocks in every tiny model
TRUNK = range(K, L - J)


def _family(name: str) -> Family:
    return next(f for f in FAMILIES if f.name == name)


def _block_index(name: str, blocks_path: str) -> int | None:
    match = re.search(rf"(?:^|\.){re.escape(blocks_path)}\.(\d+)\.", name)
    return int(match.group(1)) if match else None


def _block_parameters(model: nn.Module, blocks_path: str, keep: range) -> int:
    blocks = model.get_submodule(blocks_path)
    assert isinstance(blocks, nn.ModuleList)
    return sum(p.numel() for i in keep for p in blocks[i].parameters())


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_device_holds_only_its_spans(
    family: str, tiny_models: dict[str, TinyModel], conn: EdgeConnection
) -> None:
    tiny = tiny_models[family]
    full = tiny.model_class.from_pretrained(tiny.path)
    blocks_path = _family(family).blocks_path
    expected = sum(p.numel() for p in full.parameters()) - _block_parameters(full, blocks_path, TRUNK)

    with SplitModel.from_pretrained(
        tiny.path,
        edge=conn,
        model=family,
        device_layers=K,
        head_layers=J,
        lora_config=lora_config_for(family),
    ) as model:
        named = dict(model.named_parameters())
        # peft adds LoRA factors and a trainable copy of new/saved heads (`modules_to_save`); the
        # frozen original of such a head stays as `original_module` and is counted like the full model's.
        frozen = {n: p for n, p in named.items() if "lora_" not in n and ".modules_to_save." not in n}
        assert sum(p.numel() for p in frozen.values()) == expected
        on_meta = [n for n, t in list(named.items()) + list(model.named_buffers()) if t.is_meta]
        assert not on_meta
        blocks = {i for n in named if (i := _block_index(n, blocks_path)) is not None}
        assert blocks == {0, L - 1}, f"device holds blocks {sorted(blocks)}"


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_edge_holds_only_blocks(family: str, tiny_models: dict[str, TinyModel], edge: EdgeServer) -> None:
    tiny = tiny_models[family]
    blocks_path = _family(family).blocks_path
    root = edge.registry.get(family).span.root
    names = [n for n, _ in root.named_parameters()]
    assert names
    outside = [n for n in names if not n.startswith(f"{blocks_path}.")]
    assert not outside, f"edge holds non-block parameters {outside[:5]}"
    # The edge serves blocks[1:L] (a device keeps at least block 0), nothing else.
    assert {_block_index(n, blocks_path) for n in names} == set(range(1, L))
    full = tiny.model_class.from_pretrained(tiny.path)
    assert sum(p.numel() for p in root.parameters()) == _block_parameters(full, blocks_path, range(1, L))
    assert not any(p.requires_grad for p in root.parameters())
