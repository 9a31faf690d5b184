"""TaskEdge across the split: same masks and same training as in one process; W - W0 only on the mask."""

from __future__ import annotations

import grpc
import pytest
import torch
from transformers.pytorch_utils import Conv1D

from device_client import SplitModel
from device_client.selection import load_selected
from splitft.methods.sparse import apply_masks, sparse_modules, sparse_state_dict
from splitft.methods.taskedge import TaskEdgeConfig, taskedge_masks
from splitft.tiny import make_batch
from splitft.v1 import dataplane_pb2 as pb
from splitft.v1 import dataplane_pb2_grpc as pb_grpc

STEPS = 5
CONFIG = TaskEdgeConfig(budget_fraction=0.02)


def _batches(family: str, n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [make_batch(family, generator) for _ in range(n)]


def _train(model, optimizer, batches) -> list[float]:
    losses = []
    for batch in batches:
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_taskedge_split_matches_in_process_masks_and_training(family, tiny_models, conn, tmp_path):
    tiny = tiny_models[family]
    calibration = _batches(family, 2, seed=21)
    train = _batches(family, STEPS, seed=22)
    split = SplitModel.from_pretrained(
        tiny.path, edge=conn, model=family, device_layers=1, head_layers=1, method=CONFIG
    )
    selected = split.calibrate(calibration)
    assert selected["device"] > 0 and selected["trunk"] > 0

    reference = tiny.model_class.from_pretrained(tiny.path)
    masks = taskedge_masks(
        reference, [{k: v for k, v in b.items() if k != "labels"} for b in calibration], CONFIG
    )
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
        for bad in ('{"method": "tinytrain"}', "not json", '{"method": "taskedge", "budget": 3}'):
            with pytest.raises(grpc.RpcError) as err:
                stub.OpenSession(pb.OpenSessionRequest(**base, method_json=bad))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
