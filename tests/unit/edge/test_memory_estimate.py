"""The memory estimator against what autograd really keeps.

A model's profile is measured at load from four tiny forwards (one row, 16 and 32 tokens, one block
and all blocks, no adapter); the estimate must then hold for other shapes, splits and adapters. The
reference here counts, for a real `TrunkSession` forward with a padded mask, every distinct storage
autograd saves (parameters excepted) plus the forward's input and output, the bytes the kept
graph holds until its backward. Stated tolerance: the estimate is never below the measured bytes
and at most 5% above them (LoRA without DoRA; DoRA is an approximation, see
`splitft.memory.estimate`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from peft import LoraConfig

from edge_server.memory import kept_storages, measure_profile
from edge_server.registry import ServedModel, load_trunk
from edge_server.session import TrunkSession
from splitft.errors import InvalidArgument
from splitft.memory.estimate import (
    OPTIMIZER_SLOTS,
    MemoryProfile,
    TrunkAdapter,
    adapter_parameters,
    graph_bytes,
    optimizer_slots,
)
from splitft.memory.units import format_bytes, parse_bytes
from splitft.methods.taskedge import TaskEdgeConfig
from splitft.methods.wire import method_from_json, method_to_json
from splitft.model.spans import SplitSpec
from splitft.testing.tiny import lora_config_for, save_tiny_model
from splitft.wire.serde import EDGE_OPTIMIZERS

HIDDEN = 64
TOLERANCE = 1.05
SPLITS = ((1, 0), (2, 1))  # (device layers, head layers) of 6 blocks: 5 and 3 trunk blocks
SHAPES = ((1, 8), (2, 64), (3, 128))  # (rows, tokens): none of them the profile's own


def _save(root: Path, name: str) -> Path:
    family = "bert" if name.startswith("bert") else name
    path = save_tiny_model(family, root / name, layers=6, hidden=HIDDEN).path
    if name == "bert-dropout":  # MiniLM's settings: attention probabilities kept per token squared
        config = json.loads((path / "config.json").read_text())
        config.update(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
        (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[ServedModel, MemoryProfile]]:
    root = tmp_path_factory.mktemp("memory-models")
    models = {}
    for name in ("llama", "bert", "bert-dropout", "gpt2"):
        trunk = load_trunk(name, _save(root, name))
        models[name] = (trunk, measure_profile(trunk.span))
    return models


@contextmanager
def _saved_bytes(session: TrunkSession, found: list[int]) -> Iterator[None]:
    """Bytes of the distinct storages autograd saves in the block, parameters excepted (the trunk's
    are shared, the adapter's are its state, as are a selection's index buffers)."""
    state = [*session.root.parameters(), *(b for n, b in session.root.named_buffers() if "delta_" in n)]
    params = {t.untyped_storage().data_ptr() for t in state}  # a selection's indices are state too
    kept: dict[int, int] = {}
    with kept_storages(params, kept):  # the edge's own measuring hook (edge_server.memory)
        yield
    for tensor in (session._pending[1].inputs, session._pending[1].output):
        kept[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
    found.append(sum(kept.values()))


def _measured(session: TrunkSession, rows: int, tokens: int) -> int:
    generator = torch.Generator().manual_seed(rows * 1000 + tokens)
    mask = torch.ones(rows, tokens, dtype=torch.long)
    mask[0, -3:] = 0  # one padded row, as a device's batch has
    inputs = {"hidden": torch.randn(rows, tokens, HIDDEN, generator=generator), "attention_mask": mask}
    found: list[int] = []
    with _saved_bytes(session, found):
        session.forward(1, inputs, training=True, requires_grad=True, need_input_grad=True)
    session._pending.clear()
    return found[0]


def _lora(name: str, *, dropout: float = 0.0, r: int = 4) -> LoraConfig:
    targets = list(lora_config_for("bert" if name.startswith("bert") else name).target_modules)
    return LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=dropout, target_modules=targets)


def _adapter(config: LoraConfig | None) -> TrunkAdapter:
    if config is None:
        return TrunkAdapter()
    return TrunkAdapter.lora(config.r, sorted(config.target_modules), config.lora_dropout)


@pytest.mark.parametrize("name", ["llama", "bert", "bert-dropout", "gpt2"])
@pytest.mark.parametrize("adapter", ["frozen", "lora", "lora-dropout"])
def test_the_estimate_bounds_the_kept_graph_within_five_percent(
    served: dict[str, tuple[ServedModel, MemoryProfile]], name: str, adapter: str
) -> None:
    trunk, profile = served[name]
    config = {"frozen": None, "lora": _lora(name), "lora-dropout": _lora(name, dropout=0.1, r=8)}[adapter]
    for device_layers, head_layers in SPLITS:
        spec = SplitSpec(trunk.num_layers, device_layers, head_layers)
        session = TrunkSession("estimate", trunk.span, spec, config, seed=0)
        blocks = spec.trunk_stop - spec.trunk_start
        for rows, tokens in SHAPES:
            measured = _measured(session, rows, tokens)
            estimate = graph_bytes(
                profile, blocks=blocks, batch=rows, tokens=tokens, adapter=_adapter(config)
            )
            assert measured <= estimate <= TOLERANCE * measured, (spec, rows, tokens, measured, estimate)


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_the_estimate_bounds_a_taskedge_sessions_kept_graph(
    served: dict[str, tuple[ServedModel, MemoryProfile]], name: str
) -> None:
    """A selection's sparse deltas keep their targets' inputs and nothing weight-sized, so the
    per-token estimate of `TrunkAdapter.selection` bounds the kept graph without a fixed term."""
    trunk, profile = served[name]
    spec = SplitSpec(trunk.num_layers, 1, 0)
    method = method_from_json(method_to_json(TaskEdgeConfig(budget_fraction=0.01)))
    session = TrunkSession("taskedge", trunk.span, spec, None, seed=0, method=method)
    session.start_calibration()
    with torch.no_grad():
        _measured(session, 2, 16)
    assert session.select_parameters(2) > 0
    blocks = spec.trunk_stop - spec.trunk_start
    for rows, tokens in SHAPES:
        measured = _measured(session, rows, tokens)
        adapter = TrunkAdapter.selection(None)
        estimate = graph_bytes(profile, blocks=blocks, batch=rows, tokens=tokens, adapter=adapter)
        assert measured <= estimate <= TOLERANCE * measured, (rows, tokens, measured, estimate)


def test_attention_dropout_shows_as_a_per_token_squared_term(
    served: dict[str, tuple[ServedModel, MemoryProfile]],
) -> None:
    assert served["bert-dropout"][1].block_token2 > 10 * served["bert"][1].block_token2


@pytest.mark.parametrize("name", ["llama", "bert", "gpt2"])
def test_adapter_parameters_are_the_ones_peft_builds(
    served: dict[str, tuple[ServedModel, MemoryProfile]], name: str
) -> None:
    trunk, profile = served[name]
    config = lora_config_for("bert" if name.startswith("bert") else name, r=6)
    spec = SplitSpec(trunk.num_layers, 2, 1)
    session = TrunkSession("params", trunk.span, spec, config, seed=0)
    adapter = TrunkAdapter.lora(config.r, sorted(config.target_modules))
    assert adapter_parameters(profile, 3, adapter) == session.trainable_parameters > 0


@pytest.mark.parametrize(
    ("name", "hparams"),
    [("AdamW", {}), ("Adam", {}), ("Adam", {"amsgrad": True}), ("SGD", {}), ("SGD", {"momentum": 0.9})],
)
def test_optimizer_slots_are_the_state_tensors_torch_keeps(name: str, hparams: dict) -> None:
    param = torch.nn.Parameter(torch.randn(5, 3))
    optimizer = getattr(torch.optim, name)([param], lr=0.1, **hparams)
    param.grad = torch.ones_like(param)
    optimizer.step()
    state = optimizer.state[param]
    sized = [v for v in state.values() if isinstance(v, torch.Tensor) and v.shape == param.shape]
    assert optimizer_slots(name, hparams) == len(sized)


def test_every_edge_optimizer_has_its_slots() -> None:
    assert set(OPTIMIZER_SLOTS) == set(EDGE_OPTIMIZERS)


@pytest.mark.parametrize(
    ("text", "size"),
    [("1073741824", 1 << 30), ("8G", 8 << 30), ("8GiB", 8 << 30), ("512m", 512 << 20), ("1.5G", 3 << 29)],
)
def test_byte_sizes_parse(text: str, size: int) -> None:
    assert parse_bytes(text) == size


@pytest.mark.parametrize("text", ["", "G", "8X", "-1", "0", "1e9", "8 GB extra"])
def test_bad_byte_sizes_are_refused(text: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_bytes(text)


def test_byte_sizes_format() -> None:
    assert [format_bytes(n) for n in (512, 3 << 20, 3 << 29, -2048)] == [
        "512 B",
        "3.0 MiB",
        "1.5 GiB",
        "-2.0 KiB",
    ]
