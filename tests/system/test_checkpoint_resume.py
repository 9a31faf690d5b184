"""Session checkpoints through a real in-process edge: resuming equals not stopping, for the lossless
codec and for codecs whose encoders carry state (stochastic rounding, error feedback, low-rank warm
starts); automatic checkpoints land where they should; a checkpoint that does not verify is never
loaded. The edge-killing version with real processes is tests/e2e/test_resume_after_edge_kill.py;
bad input on the session-state RPCs is tests/adversarial/test_session_state.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load, save

from device_client import EdgeConnection, SplitModel
from device_client.checkpoint import DEVICE
from device_client.checkpoint_files import (
    CorruptCheckpoint,
    checkpoint_dirs,
    read_checkpoint,
    write_checkpoint,
)
from device_client.optim import make_scheduler
from edge_server import EdgeConfig, EdgeServer
from splitft.errors import FailedPrecondition
from splitft.methods import TaskEdgeConfig
from splitft.testing.tiny import lora_config_for, make_batch, save_tiny_model

STEPS = 5


@pytest.fixture(scope="module")
def dropout_edge(tmp_path_factory, tiny_models) -> Iterator[tuple[Path, EdgeServer]]:
    """An edge serving a tiny BERT with dropout 0.1 in every block (so RNG state matters)."""
    bert = save_tiny_model("bert", tmp_path_factory.mktemp("bert") / "bert", dropout=0.1).path
    dirs = [f"bert={bert}", f"llama={tiny_models['llama'].path}"]
    server = EdgeServer(EdgeConfig(model_dirs=dirs, port=0, insecure=True)).start()
    yield bert, server
    server.stop(grace=1)


def _open(bert: Path, conn: EdgeConnection, codec: str, trunk_lora: bool = True) -> tuple[SplitModel, object]:
    torch.manual_seed(0)
    model = SplitModel.from_pretrained(
        bert, edge=conn, model="bert", device_layers=1, head_layers=1,
        lora_config=lora_config_for("bert"), seed=3, codec=codec, trunk_lora=trunk_lora,
    )  # fmt: skip
    optimizer = model.configure_optimizer(torch.optim.AdamW, lr=2e-2)
    model.train()
    return model, make_scheduler(optimizer, "linear", 2, STEPS)


def _train(model: SplitModel, scheduler, start: int, stop: int) -> None:
    optimizer = model.optimizer
    assert optimizer is not None
    for step in range(start, stop):
        model.forward_backward(make_batch("bert", torch.Generator().manual_seed(step)))
        optimizer.clip_grad_norm_(1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()


@pytest.mark.parametrize(
    ("codec", "trunk_lora"),
    [
        ("raw", True),
        ("activations=int8:sr,gradients=topk:0.2", True),
        ("activations=int8,gradients=lowrank:2:ef", True),  # a residual and a warm-start basis
        ("raw", False),  # a frozen trunk: the edge's state is its dropout stream and step count
    ],
)
def test_resume_equals_training_on(dropout_edge, tmp_path, codec, trunk_lora) -> None:
    bert, server = dropout_edge
    with EdgeConnection(server.address, insecure=True) as conn:
        model, scheduler = _open(bert, conn, codec, trunk_lora)
        _train(model, scheduler, 0, STEPS)
        reference = model.adapter_state_dict()
        model.close()

        model, scheduler = _open(bert, conn, codec, trunk_lora)
        _train(model, scheduler, 0, 2)
        written = model.checkpoint(tmp_path / "ck", scheduler=scheduler, cursor={"epoch": 0, "next": 2})
        _train(model, scheduler, 2, 3)  # then lost: never checkpointed
        model.close()

        resumed = SplitModel.from_checkpoint(tmp_path / "ck", edge=conn)
        assert resumed.resumed is not None and resumed.optimizer is not None
        assert (resumed.resumed.directory, resumed.resumed.step) == (written, 2)
        assert resumed.resumed.cursor == {"epoch": 0, "next": 2} and resumed.training
        scheduler = make_scheduler(resumed.optimizer, "linear", 2, STEPS)
        resumed.resumed.restore_scheduler(scheduler)
        _train(resumed, scheduler, 2, STEPS)
        final = resumed.adapter_state_dict()
        resumed.close()
    assert set(final) == set(reference)
    for key, value in reference.items():
        torch.testing.assert_close(final[key], value, atol=1e-6, rtol=0, msg=key)


def test_checkpoint_every_writes_before_the_next_forward_and_keeps_the_newest(dropout_edge, tmp_path) -> None:
    bert, server = dropout_edge
    root = tmp_path / "every"
    with EdgeConnection(server.address, insecure=True) as conn:
        model, scheduler = _open(bert, conn, "raw")
        steps_seen: list[int] = []
        checkpointer = model.checkpoint_every(
            2, root, scheduler=scheduler, keep=2, cursor=lambda: {"seen": list(steps_seen)}
        )
        for step in range(STEPS):
            _train(model, scheduler, step, step + 1)
            steps_seen.append(step)
        # Written at the forwards of steps 0, 2 and 4 (after 0, 2 and 4 optimizer steps); 2 kept.
        assert [p.name[:17] for p in checkpoint_dirs(root)] == ["ckpt-000000000004", "ckpt-000000000002"]
        assert checkpointer.last_step == 4
        model.close()
        resumed = SplitModel.from_checkpoint(root, edge=conn)
        assert resumed.resumed is not None
        assert (resumed.resumed.step, resumed.resumed.cursor) == (4, {"seen": [0, 1, 2, 3]})
        resumed.close()


def test_a_corrupt_checkpoint_is_skipped_and_one_that_does_not_verify_never_loads(
    dropout_edge, tmp_path
) -> None:
    bert, server = dropout_edge
    root = tmp_path / "ck"
    with EdgeConnection(server.address, insecure=True) as conn:
        model, scheduler = _open(bert, conn, "raw")
        older = model.checkpoint(root, scheduler=scheduler, keep=2)
        _train(model, scheduler, 0, 1)
        newer = model.checkpoint(root, scheduler=scheduler, keep=2)
        model.close()
        torn = newer / "trunk.safetensors"
        torn.write_bytes(torn.read_bytes()[:-7])  # a torn write the manifest catches
        before = server.sessions.count()
        resumed = SplitModel.from_checkpoint(root, edge=conn)  # falls back to the older one
        assert resumed.resumed is not None and resumed.resumed.directory == older
        resumed.close()
        (older / "meta.json").write_bytes(b"{}")
        with pytest.raises(CorruptCheckpoint, match="no checkpoint in .* verifies"):
            SplitModel.from_checkpoint(root, edge=conn)
        assert server.sessions.count() == before  # refused before any session opened


def test_a_checkpoint_taken_on_cuda_is_refused_on_the_cpu(dropout_edge, tmp_path) -> None:
    """The CPU side of the CUDA-only RNG branch (device_client/resume.py `_restore_rng`): a checkpoint
    carrying CUDA's RNG state (written here as a CUDA device would write it) cannot resume on the CPU,
    whose sampling would silently differ; refused before training goes on."""
    bert, server = dropout_edge
    with EdgeConnection(server.address, insecure=True) as conn:
        model, scheduler = _open(bert, conn, "raw")
        files = read_checkpoint(model.checkpoint(tmp_path / "ck", scheduler=scheduler))
        model.close()
        device = load(files[DEVICE])
        device["rng/cuda"] = torch.get_rng_state()  # the same kind of ByteTensor torch.cuda returns
        write_checkpoint(tmp_path / "ck", 1, {**files, DEVICE: save(device)})
        before = server.sessions.count()
        with pytest.raises(FailedPrecondition, match="taken on CUDA; resume it with device='cuda'"):
            SplitModel.from_checkpoint(tmp_path / "ck", edge=conn)
        assert server.sessions.count() == before  # the session it opened was closed


def test_selection_methods_and_models_without_an_optimizer_are_refused(
    dropout_edge, tiny_models, tmp_path
) -> None:
    bert, server = dropout_edge
    with EdgeConnection(server.address, insecure=True) as conn:
        model = SplitModel.from_pretrained(
            tiny_models["llama"].path, edge=conn, model="llama", device_layers=1, head_layers=1,
            method=TaskEdgeConfig(),
        )  # fmt: skip
        with pytest.raises(FailedPrecondition, match="selection method"):
            model.checkpoint(tmp_path / "sel")
        with pytest.raises(FailedPrecondition, match="checkpoints cover LoRA"):
            model.checkpoint_every(1, tmp_path / "sel")
        with pytest.raises(FailedPrecondition, match="selected entries and scorer state are not exportable"):
            model._trunk.export_state()  # the edge refuses too, whoever asks
        model.close()
        lora, _ = _open(bert, conn, "raw")
        lora._optimizer = None
        with pytest.raises(FailedPrecondition, match="configure_optimizer before checkpointing"):
            lora.checkpoint(tmp_path / "none")
        lora.close()
    assert not (tmp_path / "none").exists() or not checkpoint_dirs(tmp_path / "none")
