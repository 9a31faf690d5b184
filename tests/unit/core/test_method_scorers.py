"""The trunk halves (`TrunkScorer` subclasses) on a whole tiny model, no gRPC: same choice as in one process.

The edge drives a scorer with the session's events (`on_forward`, `on_backward`) and the data plane's
selection calls; here a plain model stands in for the trunk, so each call's state rules and its
result are checked directly.
"""

from __future__ import annotations

import math

import pytest
import torch

from splitft.errors import FailedPrecondition, InvalidArgument
from splitft.methods import get_method, sparse_modules
from splitft.methods.taskedge import TaskEdgeConfig, TaskEdgeScorer, per_row_k, taskedge_masks
from splitft.methods.tinytrain import TinyTrainConfig, TinyTrainScorer, TinyTrainTrunk, fisher_pass
from splitft.methods.wire import method_from_json, method_to_json
from splitft.testing.tiny import _build, make_batch


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return _build("llama", 2, 32)


def _batches(n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [make_batch("llama", generator) for _ in range(n)]


def test_taskedge_scorer_selects_what_taskedge_masks_selects():
    config = TaskEdgeConfig(budget_fraction=0.01)
    batches = [{k: v for k, v in b.items() if k != "labels"} for b in _batches(2, seed=1)]
    reference = taskedge_masks(_model(), batches, config)
    model = _model()
    scorer = method_from_json(method_to_json(config)).scorer(model)
    assert isinstance(scorer, TaskEdgeScorer) and scorer.rows > 0
    with pytest.raises(FailedPrecondition, match="before StartCalibration"):
        scorer.select_parameters(1)
    with pytest.raises(FailedPrecondition, match="not part of taskedge"):
        scorer.measurements()
    scorer.start()
    with torch.no_grad():
        for batch in batches:
            scorer.on_forward(batch["attention_mask"])  # what the session does before each trunk run
            model(**batch)
    k = per_row_k(max(1, math.floor(0.01 * sum(p.numel() for p in model.parameters()))), scorer.rows)
    chosen = scorer.select_parameters(k)
    wrapped = sparse_modules(model)
    assert set(wrapped) == set(reference)
    for name, mask in reference.items():
        assert torch.equal(wrapped[name].mask(), mask), name
    assert chosen == sum(int(m.sum()) for m in reference.values())
    with pytest.raises(FailedPrecondition, match="already selected"):
        scorer.start()


def test_tinytrain_scorer_measures_what_fisher_pass_measures():
    batches = _batches(2, seed=2)
    reference_model = _model()
    names = TinyTrainScorer(reference_model, TinyTrainTrunk()).names
    reference = fisher_pass(reference_model, batches, None, names)
    model = _model()
    scorer = get_method("tinytrain").trunk_half()(model, TinyTrainTrunk())
    assert not scorer.measuring_gradients
    scorer.start()
    assert scorer.measuring_gradients  # the session keeps graphs for these backwards
    model.eval()
    for batch in batches:
        model(**batch).loss.backward()
        scorer.on_backward(batch["input_ids"].shape[0])
    layers, samples, potentials = scorer.measurements()
    assert samples == sum(b["input_ids"].shape[0] for b in batches)
    assert [x.name for x in layers] == reference.order
    for name, value in reference.potentials.items():
        torch.testing.assert_close(potentials[name], value, rtol=1e-5, atol=1e-9)
    with pytest.raises(FailedPrecondition, match="not part of tinytrain"):
        scorer.select_parameters(1)
    with pytest.raises(InvalidArgument, match="repeat"):
        scorer.select_channels({names[0]: torch.tensor([1, 1])})
    assert scorer.calibrating  # a refused selection leaves calibration as it was
    assert scorer.select_channels({names[0]: torch.tensor([0, 2])}) == 2 * 32
    assert not scorer.calibrating and list(sparse_modules(model)) == [names[0]]


def test_tinytrain_config_wire_share_is_the_layers_only():
    config = TinyTrainConfig(memory_budget_bytes=1e6, compute_budget_macs=math.inf, target_modules=["q_proj"])
    trunk = method_from_json(method_to_json(config))
    assert trunk.name == "tinytrain" and trunk.config == TinyTrainTrunk(["q_proj"])
