"""A selection method's trunk adapter obeys the edge's per-session bound (--max-adapter-parameters).

LoRA adapters were bounded when the session opened; a selection is made later, by the device's
calls, so without this check a device could select every trunk weight (k_per_row as large as the
rows, or every channel) and make the edge hold a trainable copy of the trunk plus optimizer state.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from device_client import EdgeConnection, SplitModel
from edge_server import EdgeConfig, EdgeServer
from edge_server.limits import DataPlaneLimits
from splitft.errors import ResourceExhausted
from splitft.methods import TaskEdgeConfig, sparse_modules
from splitft.methods.taskedge import TaskEdgeScorer
from splitft.testing.tiny import TinyModel, _build, make_batch

BOUND = 2000  # trunk entries; the tiny llama's trunk blocks hold far more


@pytest.fixture(scope="module")
def small_edge(tiny_models: dict[str, TinyModel]) -> Iterator[EdgeServer]:
    config = EdgeConfig(
        model_dirs=[f"llama={tiny_models['llama'].path}"],
        port=0,
        insecure=True,
        limits=DataPlaneLimits(max_adapter_parameters=BOUND),
    )
    server = EdgeServer(config).start()
    yield server
    server.stop(grace=1)


def _batch() -> dict[str, torch.Tensor]:
    return make_batch("llama", torch.Generator().manual_seed(3))


def test_a_selection_over_the_bound_is_refused_and_a_smaller_one_passes(small_edge, tiny_models):
    path = tiny_models["llama"].path
    with EdgeConnection(small_edge.address, insecure=True) as conn:
        big = TaskEdgeConfig(budget_fraction=0.5)  # half of every weight: far over BOUND on the trunk
        with SplitModel.from_pretrained(
            path, edge=conn, model="llama", device_layers=1, head_layers=1, method=big
        ) as model:
            with pytest.raises(ResourceExhausted, match="max-adapter-parameters"):
                model.calibrate([_batch()])
            assert model.trainable_parameters()["trunk"] == 0
        small = TaskEdgeConfig(budget_fraction=0.001)
        with SplitModel.from_pretrained(
            path, edge=conn, model="llama", device_layers=1, head_layers=1, method=small
        ) as model:
            selected = model.calibrate([_batch()])
            assert 0 < selected["trunk"] <= BOUND


def test_the_scorer_refuses_before_wrapping_and_keeps_calibrating():
    torch.manual_seed(0)
    model = _build("llama", 2, 32)
    scorer = TaskEdgeScorer(model, TaskEdgeConfig())
    scorer.max_entries = 100
    scorer.start()
    batch = {k: v for k, v in _batch().items() if k != "labels"}
    with torch.no_grad():
        scorer.on_forward(batch["attention_mask"])
        model(**batch)
    with pytest.raises(ResourceExhausted, match="at most 100"):
        scorer.select_parameters(8)
    assert scorer.calibrating and not sparse_modules(model)


def test_the_scorer_bound_counts_entries_exactly():
    torch.manual_seed(0)
    model = _build("llama", 2, 32)
    scorer = TaskEdgeScorer(model, TaskEdgeConfig())
    scorer.start()
    batch = {k: v for k, v in _batch().items() if k != "labels"}
    with torch.no_grad():
        model(**batch)
    rows = scorer.rows
    scorer.max_entries = rows  # k = 1 selects exactly one entry per row: at the bound, allowed
    assert scorer.select_parameters(1) == rows
