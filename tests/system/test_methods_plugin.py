"""A selection method is a plugin: one registered in this file alone trains through a real split.

"magnitude" keeps the top-k entries of every row of every target layer by |W|, with a device half
(its own layers) and a trunk half (the edge's layers, over the real gRPC edge on loopback). Nothing
outside this file knows it: the SDK, the edge session and the wire JSON reach it through
`splitft.methods.registry`. The same file checks the registry's refusals, and that the method
configs, the registry and the wire form import no torch (the control plane validates with them).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch
from torch import nn

from device_client import SplitModel
from splitft.errors import FailedPrecondition, InvalidArgument
from splitft.methods import (
    apply_masks,
    load_selected,
    merge_sparse_deltas,
    sparse_modules,
    sparse_state_dict,
)
from splitft.methods.checks import check_fields, check_positive_int, checked_filters
from splitft.methods.common import find_target_modules, linear_shape, linear_weight
from splitft.methods.port import Calibrated, SplitView
from splitft.methods.registry import SplitMethod, get_method, register_method, unregister_method
from splitft.methods.scorer import TrunkScorer
from splitft.methods.sparse import read_sparse_deltas
from splitft.methods.taskedge import TaskEdgeConfig
from splitft.methods.wire import method_from_json, method_to_json
from splitft.testing.tiny import make_batch
from splitft.v1 import dataplane_pb2 as pb
from splitft.v1 import dataplane_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[2]

# --- the toy method: config, scoring, device half, trunk half, wire form --------------------------


@dataclass
class MagnitudeConfig:
    """Keep the `k_per_row` largest |W| entries of every row of every target layer."""

    k_per_row: int = 2
    target_modules: list[str] | None = None

    def __post_init__(self) -> None:
        check_positive_int("k_per_row", self.k_per_row)
        if self.target_modules is not None:
            self.target_modules = checked_filters(self.target_modules)


def magnitude_masks(root: nn.Module, names: list[str], k: int) -> dict[str, torch.Tensor]:
    """Top-k |W| entries per row ([out, in] masks; ties toward the lower column)."""
    masks = {}
    for name in names:
        weight = linear_weight(root.get_submodule(name)).detach().abs()
        top = torch.argsort(weight, dim=1, descending=True, stable=True)[:, : min(k, weight.shape[1])]
        masks[name] = torch.zeros_like(weight, dtype=torch.bool).scatter_(1, top, True)
    return masks


def to_wire(config: MagnitudeConfig) -> dict[str, Any]:
    return {"k_per_row": config.k_per_row, "target_modules": config.target_modules}


def from_wire(fields: dict[str, Any]) -> MagnitudeConfig:
    check_fields(fields, ("k_per_row", "target_modules"), "method_json for magnitude")
    return MagnitudeConfig(**fields)


def calibrate(
    split: SplitView, batches: list[Any], config: MagnitudeConfig, loss_fn: Any = None
) -> Calibrated:
    """Device half: select the device's layers, then ask the trunk to select its own."""
    names = find_target_modules(split.root, config.target_modules)
    masks = magnitude_masks(split.root, names, config.k_per_row)
    apply_masks(split.root, masks, freeze_model=True)
    split.trunk.start_calibration()
    trunk = split.trunk.select_parameters(config.k_per_row)
    return Calibrated({"device": sum(int(m.sum()) for m in masks.values()), "trunk": trunk})


class MagnitudeScorer(TrunkScorer):
    """Trunk half: no measurement; SelectParameters picks by |W| with the device's k."""

    method = "magnitude"

    def __init__(self, root: nn.Module, config: MagnitudeConfig) -> None:
        super().__init__(root, config.target_modules)
        self.config = config

    def select_parameters(self, k_per_row: int) -> int:
        if not self.calibrating:
            raise FailedPrecondition("SelectParameters before StartCalibration")
        if k_per_row != self.config.k_per_row:
            raise InvalidArgument(f"k_per_row {k_per_row} != the session's {self.config.k_per_row}")
        return self.apply(magnitude_masks(self.root, self.names, k_per_row))


MAGNITUDE = SplitMethod(
    name="magnitude",
    config_cls=MagnitudeConfig,
    to_wire=to_wire,
    from_wire=from_wire,
    calibrate=calibrate,
    trunk_scorer=MagnitudeScorer,
)


@pytest.fixture
def magnitude() -> Iterator[SplitMethod]:
    """The toy method, registered for one test only (the edge runs in this process)."""
    register_method(MAGNITUDE)
    yield MAGNITUDE
    unregister_method("magnitude")


# --- it trains through a real split ---------------------------------------------------------------


def _batches(family: str, n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [make_batch(family, generator) for _ in range(n)]


def _train(model: nn.Module, optimizer: Any, batches: list[dict[str, torch.Tensor]]) -> list[float]:
    losses = []
    for batch in batches:
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def _trunk_masks(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    masks = {}
    for key, flat in state.items():
        if key.endswith(".delta_indices"):
            name = key.removesuffix(".delta_indices")
            out, inp = linear_shape(model.get_submodule(name))
            masks[name] = torch.zeros(out * inp, dtype=torch.bool).index_fill_(0, flat, True).view(out, inp)
    return masks


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_a_method_registered_in_a_test_trains_through_a_real_split(
    family, magnitude, tiny_models, conn, tmp_path
):
    tiny = tiny_models[family]
    config = MagnitudeConfig(k_per_row=3)
    split = SplitModel.from_pretrained(
        tiny.path, edge=conn, model=family, device_layers=1, head_layers=1, method=config
    )
    selected = split.calibrate(_batches(family, 1, seed=5))

    reference = tiny.model_class.from_pretrained(tiny.path)
    expected = magnitude_masks(reference, find_target_modules(reference), 3)
    device_modules = sparse_modules(split.root)
    trunk = _trunk_masks(split._trunk.export_adapter(), reference)
    assert device_modules and trunk, "both sides select"
    assert set(device_modules) | set(trunk) == set(expected) and not set(device_modules) & set(trunk)
    for name, mask in expected.items():
        got = device_modules[name].mask() if name in device_modules else trunk[name]
        assert torch.equal(got, mask), name
    assert selected["device"] + selected["trunk"] == sum(int(m.sum()) for m in expected.values())

    # Training the selection across the split equals training it in one process.
    apply_masks(reference, expected, freeze_model=True)
    hp = dict(lr=1e-2, weight_decay=0.0)
    opt_s = split.configure_optimizer(torch.optim.AdamW, **hp)
    opt_r = torch.optim.AdamW([p for p in reference.parameters() if p.requires_grad], **hp)
    split.train()
    reference.train()
    train = _batches(family, 4, seed=6)
    assert _train(split, opt_s, train) == pytest.approx(_train(reference, opt_r, train), abs=1e-5)
    final_s, final_r = split.adapter_state_dict(), sparse_state_dict(reference)
    assert set(final_s) == set(final_r)
    for key, value in final_r.items():
        torch.testing.assert_close(final_s[key], value, atol=1e-5, rtol=0)

    # Saved under its registered name, loadable into a plain HF model like any selection adapter.
    split.save_adapter(tmp_path / "adapter")
    assert read_sparse_deltas(tmp_path / "adapter")[1]["metadata"]["method"] == "magnitude"
    tuned = dict(
        load_selected(tiny.model_class.from_pretrained(tiny.path), tmp_path / "adapter").named_parameters()
    )
    for name, param in merge_sparse_deltas(reference).named_parameters():
        torch.testing.assert_close(tuned[name], param, atol=1e-5, rtol=0)
    split.close()


def test_the_edge_answers_a_plugin_session_with_precise_statuses(magnitude, edge):
    base = dict(
        model="llama", device_layers=1, head_layers=1, codec="raw",
        model_type="llama", num_layers=4, hidden_size=32,
    )  # fmt: skip
    with grpc.insecure_channel(edge.address) as channel:
        stub = pb_grpc.DataPlaneStub(channel)
        sid = stub.OpenSession(
            pb.OpenSessionRequest(**base, method_json=method_to_json(MagnitudeConfig(k_per_row=2)))
        ).session_id
        with pytest.raises(grpc.RpcError) as err:  # a call the method does not implement
            list(stub.FisherPotentials(pb.FisherPotentialsRequest(session_id=sid)))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "magnitude" in (err.value.details() or "")
        with pytest.raises(grpc.RpcError) as err:  # its own rule: StartCalibration first
            stub.SelectParameters(pb.SelectParametersRequest(session_id=sid, k_per_row=2))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert stub.StartCalibration(pb.StartCalibrationRequest(session_id=sid)).target_rows > 0
        with pytest.raises(grpc.RpcError) as err:  # its own validation
            stub.SelectParameters(pb.SelectParametersRequest(session_id=sid, k_per_row=5))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        chosen = stub.SelectParameters(pb.SelectParametersRequest(session_id=sid, k_per_row=2))
        assert chosen.selected > 0 and chosen.layers > 0
        for bad in ('{"method": "magnitude", "k_per_row": 0}', '{"method": "magnitude", "budget": 1}'):
            with pytest.raises(grpc.RpcError) as err:  # the method's from_wire refuses
                stub.OpenSession(pb.OpenSessionRequest(**base, method_json=bad))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
        stub.CloseSession(pb.CloseSessionRequest(session_id=sid))


def test_an_unregistered_method_is_refused_on_both_sides(edge, tiny_models, conn):
    with pytest.raises(InvalidArgument, match="magnitude|MagnitudeConfig"):
        SplitModel.from_pretrained(
            tiny_models["llama"].path, edge=conn, model="llama", device_layers=1, method=MagnitudeConfig()
        )
    with pytest.raises(InvalidArgument, match="not supported across the split"):
        method_from_json('{"method": "magnitude", "k_per_row": 2}')
    with grpc.insecure_channel(edge.address) as channel:
        request = pb.OpenSessionRequest(
            model="llama", device_layers=1, head_layers=1, method_json='{"method": "magnitude"}'
        )
        with pytest.raises(grpc.RpcError) as err:
            pb_grpc.DataPlaneStub(channel).OpenSession(request)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# --- the registry itself --------------------------------------------------------------------------


def test_the_registry_refuses_a_taken_name_or_config_class(magnitude):
    with pytest.raises(InvalidArgument, match="already registered"):
        register_method(SplitMethod("magnitude", dict, to_wire, from_wire, calibrate, MagnitudeScorer))
    with pytest.raises(InvalidArgument, match="already belongs to method 'taskedge'"):
        register_method(SplitMethod("other", TaskEdgeConfig, to_wire, from_wire, calibrate, MagnitudeScorer))
    with pytest.raises(InvalidArgument, match="identifier"):
        register_method(SplitMethod("no such", dict, to_wire, from_wire, calibrate, MagnitudeScorer))
    assert register_method(MAGNITUDE) is MAGNITUDE  # the same method again is a no-op
    assert get_method("magnitude") is MAGNITUDE


def test_builtin_configs_round_trip_through_json():
    te, tt = get_method("taskedge"), get_method("tinytrain")
    config = te.config_from({"budget_fraction": 0.01, "n_m": [2, 4], "target_modules": ["q_proj"]})
    assert config == TaskEdgeConfig(0.01, (2, 4), ["q_proj"])
    assert te.config_from(te.config_to_json(config)) == config  # type: ignore[misc]
    unlimited = tt.config_from({"memory_budget_bytes": None, "channel_ratios": [0.5, 1.0]})
    assert unlimited.memory_budget_bytes == float("inf") and unlimited.channel_ratios == (1.0, 0.5)
    assert tt.config_to_json(unlimited)["memory_budget_bytes"] is None  # type: ignore[misc]
    for method, bad in ((te, {"budget_fraction": 2}), (te, {"budget": 1}), (tt, {"channel_ratios": []})):
        with pytest.raises(InvalidArgument):
            method.config_from(bad)


def test_configs_registry_and_wire_import_no_torch():
    # The control plane has no torch; it validates method configs with these same modules.
    code = (
        "import sys\n"
        "for name in ('torch', 'transformers', 'peft', 'safetensors', 'numpy'):\n"
        "    sys.modules[name] = None\n"
        "from splitft.methods import method_names, get_method\n"
        "from splitft.methods.taskedge.config import TaskEdgeConfig\n"
        "from splitft.methods.wire import method_to_json, method_from_json\n"
        "assert method_names() == ('taskedge', 'tinytrain'), method_names()\n"
        "print(method_from_json(method_to_json(TaskEdgeConfig(n_m=(2, 4)))).config)\n"
        "print(get_method('tinytrain').config_from({'compute_budget_macs': 1e9}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "n_m=(2, 4)" in result.stdout and "compute_budget_macs=1000000000.0" in result.stdout
