"""`bench federated`'s device training through a real in-process edge: a kept optimizer, an lr schedule.

`SplitModel.from_checkpoint(path, adapter=...)` opens a new session with the checkpoint's whole
state (both sides' optimizer moments and step counts) but the given adapter's weights; with it,
one device's FedAvg over R rounds of L steps (`bench federated --local-optimizer kept`) IS that
device's uninterrupted training of R x L steps, which the default fresh optimizer per round is not.
The evaluator of `run_rounds` is replaced by one that scores nothing: accuracy is not what is tested.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from device_client import EdgeConnection, SplitModel
from device_client.checkpoint import TRUNK_TENSORS
from device_client.checkpoint_files import checkpoint_dirs
from edge_server import EdgeConfig, EdgeServer
from splitft.bench.federated_rounds import Rounds, Shard, run_rounds
from splitft.bench.federated_train import (
    EDGE_MODEL,
    Split,
    initial_adapter,
    read_state,
    schedule_factors,
    train_local,
)
from splitft.errors import InvalidArgument
from splitft.testing.tiny import make_batch, save_tiny_model


class _NoScore:
    """Stands in for the bench's Evaluator (peft accuracy on the demo task's texts, which this tiny
    model has no tokenizer for): the rounds' figures are not under test here."""

    def accuracy(self, adapter: Path, on: str = "test") -> float:
        return 0.0


@pytest.fixture(scope="module")
def bench_edge(tmp_path_factory) -> Iterator[Split]:
    """A tiny BERT (no dropout: the rounds reseed their dropout, the uninterrupted run does not)
    served under the bench's model name, and the bench's split of it."""
    bert = save_tiny_model("bert", tmp_path_factory.mktemp("bert") / "bert", layers=4).path
    server = EdgeServer(EdgeConfig(model_dirs=[f"{EDGE_MODEL}={bert}"], port=0, insecure=True)).start()
    yield Split(bert, server.address, num_labels=3, lr=5e-3)
    server.stop(grace=1)


def _batches(n: int) -> list[dict[str, torch.Tensor]]:
    return [make_batch("bert", torch.Generator().manual_seed(100 + i)) for i in range(n)]


def _assert_states(a: dict[str, np.ndarray], b: dict[str, np.ndarray], equal: bool) -> None:
    assert a.keys() == b.keys()
    worst = max(float(np.abs(a[k] - b[k]).max()) for k in a)
    assert (worst < 1e-6) == equal, f"largest difference {worst}"


def test_one_device_with_a_kept_optimizer_equals_its_uninterrupted_training(bench_edge, tmp_path) -> None:
    split, batches = bench_edge, _batches(6)
    start = initial_adapter(split, tmp_path / "initial", seed=7)
    whole = train_local(split, start, batches, tmp_path / "whole", seed=7)
    shard = [Shard(examples=24, batches=batches)]
    rounds = {}
    for kept in (True, False):
        plan = Rounds(3, 2, None, seed=0, kept_optimizer=kept)
        run_rounds(plan, split, start, shard, _NoScore(), tmp_path / f"kept-{kept}")  # type: ignore[arg-type]
        rounds[kept] = read_state(tmp_path / f"kept-{kept}" / "round-2" / "global")
    # the device's seed in the rounds is seed * 100 + k = 0; dropout is off, so seeds do not matter
    _assert_states(rounds[True], read_state(whole.adapter), equal=True)
    _assert_states(rounds[False], read_state(whole.adapter), equal=False)  # a fresh AdamW per round


def test_resuming_onto_an_adapter_takes_its_weights_and_keeps_both_optimizers(bench_edge, tmp_path) -> None:
    split, batches = bench_edge, _batches(4)
    start = initial_adapter(split, tmp_path / "initial", seed=1)
    other = train_local(split, start, batches[2:], tmp_path / "other", seed=2).adapter  # other weights
    train_local(split, start, batches[:2], tmp_path / "mine", seed=1, kept=tmp_path / "state")
    (checkpoint,) = checkpoint_dirs(tmp_path / "state")
    saved_edge = load_file(str(checkpoint / TRUNK_TENSORS))
    with (
        EdgeConnection(split.address, insecure=True) as conn,
        SplitModel.from_checkpoint(tmp_path / "state", edge=conn, adapter=other) as model,
    ):
        assert model.optimizer is not None and model.optimizer.steps_taken == 2
        weights = {k: v.numpy() for k, v in model.adapter_state_dict().items()}
        _assert_states(weights, read_state(other), equal=True)  # the device's and the trunk's parts
        _, edge_tensors = model._trunk.export_state()
        moments = [k for k in saved_edge if k.startswith("optim/")]
        assert moments, "the edge's optimizer state was not in the checkpoint"
        for key in moments:  # the edge's AdamW moments, carried over untouched
            assert torch.equal(edge_tensors[key], saved_edge[key]), key
        device_moments = model.optimizer.state_dict()["state"]
        assert device_moments and all(int(s["step"]) == 2 for s in device_moments.values())


def test_a_kept_optimizer_with_a_shared_trunk_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="kept local optimizer needs an averaged trunk adapter"):
        Rounds(2, 2, None, seed=0, shared_trunk=True, kept_optimizer=True)


def test_the_lr_schedule_reaches_both_sides_of_the_split(bench_edge, tmp_path) -> None:
    """A zero factor must freeze the trunk's adapter (on the edge) as well as the device's: the
    schedule's lr travels with the SplitOptimizer's synced hyper-parameters."""
    split, batches = bench_edge, _batches(3)
    start = initial_adapter(split, tmp_path / "initial", seed=3)
    frozen = train_local(split, start, batches, tmp_path / "frozen", seed=3, lr_factors=[0.0, 0.0, 0.0])
    _assert_states(read_state(frozen.adapter), read_state(start), equal=True)
    moved = train_local(split, start, batches, tmp_path / "moved", seed=3, lr_factors=[0.0, 0.0, 1.0])
    before, after = read_state(start), read_state(moved.adapter)
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    assert any(".layer.2." in k for k in changed)  # the trunk block (on the edge: layers 0-1 device, 3 head)
    assert any(".layer.0." in k for k in changed)  # a device block


def test_schedule_factors_cut_one_schedule_over_a_device_s_steps() -> None:
    assert schedule_factors("constant", 4) == [1.0] * 4
    assert schedule_factors("linear", 4) == [1.0, 0.75, 0.5, 0.25]
    cosine = schedule_factors("cosine", 40)
    assert cosine[0] == 1.0 and cosine[20] == pytest.approx(0.5) and 0 < cosine[-1] < 0.01
    with pytest.raises(InvalidArgument, match="unknown LR schedule 'step'"):
        Rounds(2, 2, None, seed=0, lr_schedule="step")
