"""TaskEdge across the split: same masks and same training as in one process; W - W0 only on the mask."""

from __future__ import annotations

import math
import re

import grpc
import pytest
import torch
from transformers.pytorch_utils import Conv1D

from device_client import SplitModel
from device_client.selection import load_selected
from splitft.methods.common import find_target_modules, linear_shape
from splitft.methods.sparse import apply_masks, sparse_modules, sparse_state_dict
from splitft.methods.taskedge import TaskEdgeConfig, budget_entries, taskedge_masks
from splitft.methods.tinytrain import TinyTrainConfig, fisher_pass, select_tinytrain, tinytrain_masks
from splitft.testing.tiny import make_batch
from splitft.v1 import dataplane_pb2 as pb
from splitft.v1 import dataplane_pb2_grpc as pb_grpc
from splitft.wire.codec import tensors_to_parts

STEPS = 5
CONFIG = TaskEdgeConfig(budget_fraction=0.02)
N_M_CONFIG = TaskEdgeConfig(budget_fraction=0.05, n_m=(2, 4))  # k = 2 on the tiny llama
BAD_N_M = [
    ("[4, 2]", "1 <= N <= M, got N=4, M=2"),
    ("[0, 4]", "1 <= N <= M, got N=0, M=4"),
    ("[2]", "pair"),
    ('"2:4"', "pair"),
    ("[2.5, 4]", "two integers"),
]


def _batches(family: str, n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [make_batch(family, generator) for _ in range(n)]


def _block(name: str) -> int | None:
    match = re.search(r"\.(\d+)\.", name)
    return int(match.group(1)) if match else None


def tiny_blocks(model: torch.nn.Module) -> int:
    return int(model.config.num_hidden_layers)


def _train(model, optimizer, batches) -> list[float]:
    losses = []
    for batch in batches:
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize(("family", "config"), [("llama", CONFIG), ("gpt2", CONFIG), ("llama", N_M_CONFIG)])
def test_taskedge_split_matches_in_process_masks_and_training(family, config, tiny_models, conn, tmp_path):
    tiny = tiny_models[family]
    calibration = _batches(family, 2, seed=21)
    train = _batches(family, STEPS, seed=22)
    split = SplitModel.from_pretrained(
        tiny.path, edge=conn, model=family, device_layers=1, head_layers=1, method=config
    )
    selected = split.calibrate(calibration)
    assert selected["device"] > 0 and selected["trunk"] > 0

    reference = tiny.model_class.from_pretrained(tiny.path)
    masks = taskedge_masks(
        reference, [{k: v for k, v in b.items() if k != "labels"} for b in calibration], config
    )
    # Within budget on both sides together (or one entry per row, TaskEdge's floor), and
    # N:M-compatible wherever N:M is asked for.
    rows = sum(mask.shape[0] for mask in masks.values())
    assert selected["device"] + selected["trunk"] <= max(budget_entries(reference, config), rows)
    if config.n_m is not None:
        n, m = config.n_m
        assert all(bool((x.reshape(x.shape[0], -1, m).sum(-1) <= n).all()) for x in masks.values())
    device_modules = sparse_modules(split.root)
    trunk_state = split._trunk.export_adapter()
    for name, mask in masks.items():
        if name in device_modules:
            assert torch.equal(device_modules[name].mask(), mask), name
        else:
            flat = torch.nonzero(mask.flatten()).flatten()
            assert torch.equal(trunk_state[f"{name}.delta_indices"], flat), name
    assert len(device_modules) + sum(k.endswith(".delta_indices") for k in trunk_state) == len(masks)

    apply_masks(reference, masks, freeze_model=True)
    hp = dict(lr=1e-2, weight_decay=0.0)
    opt_s = split.configure_optimizer(torch.optim.AdamW, **hp)
    opt_r = torch.optim.AdamW([p for p in reference.parameters() if p.requires_grad], **hp)
    assert sum(p.numel() for p in opt_r.param_groups[0]["params"]) == selected["device"] + selected["trunk"]
    split.train()
    reference.train()
    losses_s = _train(split, opt_s, train)
    losses_r = _train(reference, opt_r, train)
    assert losses_s == pytest.approx(losses_r, abs=1e-5)
    final_s = split.adapter_state_dict()
    final_r = sparse_state_dict(reference)
    assert set(final_s) == set(final_r)
    for key, value in final_r.items():
        torch.testing.assert_close(final_s[key], value, atol=1e-5, rtol=0)

    # W - W0 is exactly zero outside the mask, on both sides, once applied to a plain HF model.
    split.save_adapter(tmp_path / "adapter")
    original = tiny.model_class.from_pretrained(tiny.path)
    tuned = load_selected(tiny.model_class.from_pretrained(tiny.path), tmp_path / "adapter")
    changed = set()
    for (name, before), (_, after) in zip(original.named_parameters(), tuned.named_parameters(), strict=True):
        diff = (after - before).detach()
        module = name.rpartition(".")[0]
        if module in masks and name.endswith("weight"):
            # Masks are in the Linear orientation [out, in]; GPT-2's Conv1D stores weights [in, out].
            conv = isinstance(original.get_submodule(module), Conv1D)
            mask = masks[module].t() if conv else masks[module]
            assert torch.count_nonzero(diff[~mask]) == 0, name
            if torch.count_nonzero(diff):
                changed.add(module)
        else:
            assert torch.count_nonzero(diff) == 0, name
    assert any(m in device_modules for m in changed) and any(m not in device_modules for m in changed)
    split.close()


def test_selection_calls_out_of_order_get_precise_statuses(edge, tiny_models):
    with grpc.insecure_channel(edge.address) as channel:
        stub = pb_grpc.DataPlaneStub(channel)
        base = dict(
            model="llama",
            device_layers=1,
            head_layers=1,
            codec="raw",
            model_type="llama",
            num_layers=4,
            hidden_size=32,
        )
        selecting = stub.OpenSession(pb.OpenSessionRequest(**base, method_json='{"method": "taskedge"}'))
        with pytest.raises(grpc.RpcError) as err:
            stub.SelectParameters(pb.SelectParametersRequest(session_id=selecting.session_id, k_per_row=1))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        stub.StartCalibration(pb.StartCalibrationRequest(session_id=selecting.session_id))
        with pytest.raises(grpc.RpcError) as err:  # no calibration forward reached the trunk yet
            stub.SelectParameters(pb.SelectParametersRequest(session_id=selecting.session_id, k_per_row=1))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        plain = stub.OpenSession(pb.OpenSessionRequest(**base))
        with pytest.raises(grpc.RpcError) as err:
            stub.StartCalibration(pb.StartCalibrationRequest(session_id=plain.session_id))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        bad_n_m = [(f'{{"method": "taskedge", "n_m": {n_m}}}', why) for n_m, why in BAD_N_M]
        for bad, why in [
            ('{"method": "lora"}', "lora"),
            ("not json", "JSON"),
            ('{"method": "taskedge", "budget": 3}', "budget"),
            *bad_n_m,
        ]:
            with pytest.raises(grpc.RpcError) as err:
                stub.OpenSession(pb.OpenSessionRequest(**base, method_json=bad))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
            assert why in (err.value.details() or ""), (bad, err.value.details())
        # An M that does not divide a trunk layer's width: refused when selecting, naming the layer.
        odd_json = '{"method": "taskedge", "n_m": [2, 3]}'
        odd = stub.OpenSession(pb.OpenSessionRequest(**base, method_json=odd_json))
        stub.StartCalibration(pb.StartCalibrationRequest(session_id=odd.session_id))
        _calibration_forward(stub, odd.session_id)
        with pytest.raises(grpc.RpcError) as err:
            stub.SelectParameters(pb.SelectParametersRequest(session_id=odd.session_id, k_per_row=1))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "is not a multiple of N:M's M=3" in (err.value.details() or "")


def _calibration_forward(stub: pb_grpc.DataPlaneStub, session_id: str) -> None:
    """One calibration forward (no grad) of a [1, 4, 32] hidden state through the trunk."""
    header = pb.ForwardHeader(session_id=session_id, forward_id=1, training=False)
    hidden = torch.randn(1, 4, 32, generator=torch.Generator().manual_seed(0))
    parts = [pb.ForwardRequest(part=p) for p in tensors_to_parts({"hidden": hidden}, "raw")]
    list(stub.Forward(iter([pb.ForwardRequest(header=header), *parts])))


def _trunk_masks(state: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """[out, in] masks from an exported trunk state (flat indices into the Linear orientation)."""
    masks = {}
    for key, flat in state.items():
        if key.endswith(".delta_indices"):
            name = key.removesuffix(".delta_indices")
            out, inp = linear_shape(model.get_submodule(name))
            mask = torch.zeros(out * inp, dtype=torch.bool)
            mask[flat] = True
            masks[name] = mask.view(out, inp)
    return masks


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
def test_tinytrain_split_matches_in_process_selection_and_training(family, tiny_models, conn, tmp_path):
    """The device's global choice over both sides equals the one-process choice from the whole
    model's potentials, priced per side (the device's budget counts only the device's layers and the
    activations it saves, the edge's budget the trunk's layers), and split training of those
    channels equals training them in one process."""
    tiny = tiny_models[family]
    support = _batches(family, 2, seed=31)
    train = _batches(family, STEPS, seed=32)
    reference = tiny.model_class.from_pretrained(tiny.path)
    unlimited = tinytrain_masks(reference, support, TinyTrainConfig(math.inf, math.inf))
    # Budgets of a third (device) and a sixth (edge) of everything: a partial choice on both sides.
    third, sixth = unlimited.memory_bytes / 3, unlimited.memory_bytes / 6
    config = TinyTrainConfig(third, math.inf, edge_memory_budget_bytes=sixth)
    measured = fisher_pass(reference, support, None, find_target_modules(reference))

    split = SplitModel.from_pretrained(
        tiny.path, edge=conn, model=family, device_layers=1, head_layers=1, method=config
    )
    selected = split.calibrate(support)
    report = split.selection_report
    assert report is not None and report.memory_bytes <= third and report.edge_memory_bytes <= sixth
    trunk_blocks = range(1, tiny_blocks(reference) - 1)
    for name, cost in report.costs.items():
        assert cost.side == ("edge" if _block(name) in trunk_blocks else "device"), name
    expected = select_tinytrain(measured.potentials, report.costs, config)
    assert report.channels == expected.channels and report.ratios == expected.ratios
    for name, score in expected.scores.items():
        assert report.scores[name] == pytest.approx(score, rel=1e-4), name
    device_modules = sparse_modules(split.root)
    trunk_masks = _trunk_masks(split._trunk.export_adapter(), reference)
    assert device_modules and trunk_masks, "the budget should pick layers on both sides"
    assert set(device_modules) | set(trunk_masks) == set(expected.masks)
    for name, mask in expected.masks.items():
        got = device_modules[name].mask() if name in device_modules else trunk_masks[name]
        assert torch.equal(got, mask), name
    assert selected["device"] + selected["trunk"] == sum(int(m.sum()) for m in expected.masks.values())

    apply_masks(reference, expected.masks, freeze_model=True)
    hp = dict(lr=1e-2, weight_decay=0.0)
    opt_s = split.configure_optimizer(torch.optim.AdamW, **hp)
    opt_r = torch.optim.AdamW([p for p in reference.parameters() if p.requires_grad], **hp)
    split.train()
    reference.train()
    losses_s = _train(split, opt_s, train)
    losses_r = _train(reference, opt_r, train)
    assert losses_s == pytest.approx(losses_r, abs=1e-5)
    final_s, final_r = split.adapter_state_dict(), sparse_state_dict(reference)
    assert set(final_s) == set(final_r)
    for key, value in final_r.items():
        torch.testing.assert_close(final_s[key], value, atol=1e-5, rtol=0)

    # Saved, applied to a plain HF model: W - W0 is zero outside the selected channels.
    split.save_adapter(tmp_path / "adapter")
    original = tiny.model_class.from_pretrained(tiny.path)
    tuned = load_selected(tiny.model_class.from_pretrained(tiny.path), tmp_path / "adapter")
    for (name, before), (_, after) in zip(original.named_parameters(), tuned.named_parameters(), strict=True):
        module = name.rpartition(".")[0]
        diff = (after - before).detach()
        if module in expected.masks and name.endswith("weight"):
            conv = isinstance(original.get_submodule(module), Conv1D)
            mask = expected.masks[module].t() if conv else expected.masks[module]
            assert torch.count_nonzero(diff[~mask]) == 0, name
            assert torch.count_nonzero(diff) > 0, name
        elif name not in split.new_parameters:
            assert torch.count_nonzero(diff) == 0, name
    split.close()


def test_tinytrain_calls_get_precise_statuses(edge, tiny_models):
    """Out-of-order and malformed TinyTrain calls: exact status codes, and the session still works."""
    from splitft.wire.codec import tensors_to_parts

    def select(stub, session_id, channels):
        header = pb.SelectChannelsRequest(header=pb.SelectChannelsHeader(session_id=session_id))
        parts = [pb.SelectChannelsRequest(part=p) for p in tensors_to_parts(channels, "raw")]
        return stub.SelectChannels(iter([header, *parts]))

    with grpc.insecure_channel(edge.address) as channel:
        stub = pb_grpc.DataPlaneStub(channel)
        base = dict(
            model="llama", device_layers=1, head_layers=1, codec="raw",
            model_type="llama", num_layers=4, hidden_size=32,
        )  # fmt: skip
        sid = stub.OpenSession(
            pb.OpenSessionRequest(**base, method_json='{"method": "tinytrain"}')
        ).session_id
        q = "model.layers.1.self_attn.q_proj"
        with pytest.raises(grpc.RpcError) as err:  # before StartCalibration
            list(stub.FisherPotentials(pb.FisherPotentialsRequest(session_id=sid)))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(grpc.RpcError) as err:
            select(stub, sid, {q: torch.tensor([0])})
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(grpc.RpcError) as err:  # TaskEdge's call on a TinyTrain session
            stub.SelectParameters(pb.SelectParametersRequest(session_id=sid, k_per_row=1))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        stub.StartCalibration(pb.StartCalibrationRequest(session_id=sid))
        with pytest.raises(grpc.RpcError) as err:  # no backward has reached the trunk yet
            list(stub.FisherPotentials(pb.FisherPotentialsRequest(session_id=sid)))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        bad = [
            {"model.embed_tokens": torch.tensor([0])},  # not a trunk target layer
            {"model.layers.0.self_attn.q_proj": torch.tensor([0])},  # a device layer
            {q: torch.tensor([0, 0])},  # repeated
            {q: torch.tensor([32])},  # out of range (out_features 32)
            {q: torch.tensor([-1])},
            {q: torch.tensor([0.0])},  # not integers
            {q: torch.tensor([], dtype=torch.int64)},
            {q: torch.tensor([[0]])},
        ]
        for channels in bad:
            with pytest.raises(grpc.RpcError) as err:
                select(stub, sid, channels)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, channels
        assert select(stub, sid, {q: torch.tensor([3, 1])}).selected == 2 * 32
        with pytest.raises(grpc.RpcError) as err:  # selected once already
            stub.StartCalibration(pb.StartCalibrationRequest(session_id=sid))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        lora = stub.OpenSession(pb.OpenSessionRequest(**base)).session_id
        with pytest.raises(grpc.RpcError) as err:
            list(stub.FisherPotentials(pb.FisherPotentialsRequest(session_id=lora)))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(grpc.RpcError) as err:
            stub.OpenSession(
                pb.OpenSessionRequest(**base, method_json='{"method": "tinytrain", "n_m": [2, 4]}')
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        for session_id in (sid, lora):
            stub.CloseSession(pb.CloseSessionRequest(session_id=session_id))
