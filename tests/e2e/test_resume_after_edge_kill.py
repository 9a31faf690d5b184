"""Resumed training equals uninterrupted training (issue 17), with real processes.

Two edges run as `splitft edge serve` processes over mutual TLS with session tokens. A reference
run trains a tiny BERT with dropout 0.1 on both sides (AdamW, cosine schedule with warmup, global
norm clipping, batches in a shuffled order) for STEPS steps on edge B, never interrupted. The same
run on edge A checkpoints every step; edge A is killed with SIGKILL at a seeded step and phase,
the training loop sees the failure, resumes from the last checkpoint on edge B (a new session,
another token) and finishes. Both adapters (device and trunk) must agree within 1e-5.

Teeth: resuming from the same checkpoint without restoring randomness, or with only the edge's
dropout stream or only the device's advanced, ends elsewhere; so the test really checks that both
sides' RNG states travel with a checkpoint.
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from device_client import SplitModel
from device_client.optim import make_scheduler
from device_client.retry import RetryPolicy
from splitft.errors import Unavailable
from splitft.local.launch import EdgeProcess, LocalPki
from splitft.testing.tiny import lora_config_for, make_batch, save_tiny_model

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

STEPS = 7
POOL = 3  # distinct batches, drawn in a new shuffled order every epoch
KILL_SEED = int(os.environ.get("SPLITFT_KILL_SEED", "17"))  # picks the step and phase edge A dies at
PHASES = ("before_forward", "after_backward", "after_step")
TOLERANCE = 1e-5


def _batch(step: int, pool: list[dict]) -> dict:
    """The data order: epoch e visits the pool in a permutation seeded by e."""
    epoch, index = divmod(step, len(pool))
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(100 + epoch))
    return pool[int(order[index])]


def _open(path: Path, conn) -> tuple[SplitModel, torch.optim.Optimizer, object]:
    torch.manual_seed(0)  # the device adapter's initialisation
    model = SplitModel.from_pretrained(
        path,
        edge=conn,
        model="bert",
        device_layers=1,
        head_layers=1,
        lora_config=lora_config_for("bert"),
        seed=11,
        retry=RetryPolicy(max_attempts=3, budget_s=1.0, seed=0),  # the edge is killed: fail over fast
    )
    optimizer = model.configure_optimizer(torch.optim.AdamW, lr=2e-2, weight_decay=0.01)
    scheduler = make_scheduler(optimizer, "cosine", 2, STEPS)
    model.train()
    return model, optimizer, scheduler


def _train(
    model: SplitModel,
    scheduler,
    pool: list[dict],
    start: int,
    hook: Callable[[int, str], None] = lambda step, phase: None,
) -> dict[str, torch.Tensor]:
    optimizer = model.optimizer
    assert optimizer is not None
    for step in range(start, STEPS):
        hook(step, "before_forward")
        model.forward_backward(_batch(step, pool))
        hook(step, "after_backward")
        optimizer.clip_grad_norm_(1.0)
        optimizer.step()
        hook(step, "after_step")
        scheduler.step()
        optimizer.zero_grad()
    return model.adapter_state_dict()


def _resume(root: Path, conn, **options) -> tuple[SplitModel, object]:
    model = SplitModel.from_checkpoint(root, edge=conn, **options)
    assert model.optimizer is not None and model.resumed is not None
    scheduler = make_scheduler(model.optimizer, "cosine", 2, STEPS)
    model.resumed.restore_scheduler(scheduler)
    return model, scheduler


def _gap(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert set(a) == set(b)
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture
def two_edges(tmp_path: Path) -> Iterator[tuple[Path, LocalPki, EdgeProcess, EdgeProcess]]:
    bert = save_tiny_model("bert", tmp_path / "bert", dropout=0.1).path
    pki = LocalPki.create(tmp_path / "certs")
    edges = [
        EdgeProcess(
            [f"bert={bert}"],
            threads=1,
            tls=pki.tls,
            extra_args=pki.edge_args(),
            log_path=str(tmp_path / f"edge-{name}.log"),
        )
        for name in "ab"
    ]
    with ThreadPoolExecutor(2) as pool:  # both start at once: most of their time is imports
        list(pool.map(lambda edge: edge.start(timeout=90), edges))
    try:
        yield bert, pki, edges[0], edges[1]
    finally:
        for edge in edges:
            edge.stop()


def test_resume_on_another_edge_after_sigkill_equals_uninterrupted_training(two_edges, tmp_path) -> None:
    bert, pki, edge_a, edge_b = two_edges
    pool = [make_batch("bert", torch.Generator().manual_seed(3 + i)) for i in range(POOL)]
    connect = lambda edge, session: pki.connect(edge.address, session=session, model="bert")  # noqa: E731

    model, _, scheduler = _open(bert, connect(edge_b, "reference"))
    reference = _train(model, scheduler, pool, 0)
    model.close()
    assert any(".1." in k or ".2." in k for k in reference)  # the trunk's adapter is compared too

    chooser = random.Random(KILL_SEED)
    kill_step, kill_phase = chooser.randrange(1, STEPS - 1), chooser.choice(PHASES)
    root = tmp_path / "checkpoints"

    def kill(step: int, phase: str) -> None:
        if (step, phase) == (kill_step, kill_phase):
            assert edge_a.process is not None
            edge_a.process.kill()  # SIGKILL: no graceful stop, the session dies with the process
            edge_a.process.wait()

    model, _, scheduler = _open(bert, connect(edge_a, "doomed"))
    model.checkpoint_every(1, root, scheduler=scheduler)
    with pytest.raises(Unavailable):
        _train(model, scheduler, pool, 0, hook=kill)
    assert edge_a.process is not None and edge_a.process.returncode == -9
    snapshot = tmp_path / "snapshot"
    shutil.copytree(root, snapshot)  # the teeth below resume from the same checkpoint

    resumed, scheduler = _resume(root, connect(edge_b, "resumed"))
    assert resumed.resumed is not None
    step = resumed.resumed.step
    # Checkpoints are written at the start of each step's forward: a kill before that forward
    # loses the step before it too, a kill later in the step (or after it) only that step.
    assert step == (kill_step - 1 if kill_phase == "before_forward" else kill_step)
    resumed.checkpoint_every(1, root, scheduler=scheduler)
    final = _train(resumed, scheduler, pool, step)
    assert resumed.stats.steps == STEPS  # the edge's count went on from the checkpoint's
    resumed.close()
    gap = _gap(final, reference)
    print(f"edge A killed at step {kill_step} ({kill_phase}); resumed at {step}; gap {gap:.2e}")
    assert gap <= TOLERANCE, f"killed at step {kill_step} ({kill_phase}), resumed at {step}: gap {gap}"

    # Teeth: without the RNG states (both sides), with only the edge's dropout stream moved on, or
    # with only the device's, the same resume ends elsewhere.
    variants: dict[str, Callable[[SplitModel], None]] = {
        "no RNG restored": lambda m: None,
        "edge RNG advanced": lambda m: m._trunk.forward(
            torch.zeros(2, 4, 32), {}, training=True, requires_grad=False, need_input_grad=False
        ),
        "device RNG advanced": lambda m: torch.rand(1),
    }
    for i, (name, perturb) in enumerate(variants.items()):
        other, scheduler = _resume(snapshot, connect(edge_b, f"teeth-{i}"), restore_rng=i != 0)
        perturb(other)
        gap = _gap(_train(other, scheduler, pool, step), reference)
        other.close()
        print(f"teeth, {name}: gap {gap:.2e}")
        assert gap > 100 * TOLERANCE, f"{name}: the resumed run still matched (gap {gap})"
