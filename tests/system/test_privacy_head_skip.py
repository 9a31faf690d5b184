"""`privacy.head_skip` on a real edge: the blocks after the trunk also read a private map of h_k.
It starts at zero (the model starts as it would without it), it is the task's path back to the
device's first blocks when the gradients are withheld, and it is saved beside the peft adapter and
in checkpoints, never sent."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from device_client import EdgeConnection, SplitModel
from device_client.head_skip import HEAD_SKIP_FILE, head_skip_of
from edge_server import EdgeServer
from splitft.errors import InvalidArgument
from splitft.testing.tiny import TinyModel, lora_config_for, make_batch
from tests.system.test_privacy_wire import DEVICE_LAYERS, _h_k, _lora_b_moved, _open, _run

WITHHELD = {"withhold_gradients": True, "head_skip": True}


@pytest.fixture(scope="module")
def bert(tiny_models: dict[str, TinyModel]) -> TinyModel:
    return tiny_models["bert"]


def _skip_weight(model: SplitModel) -> torch.Tensor:
    skip = head_skip_of(model)
    assert skip is not None, "the model has no head skip"
    return skip.weight.detach().clone()


def test_head_skip_starts_as_the_model_without_it(bert: TinyModel, edge: EdgeServer) -> None:
    plain, _, plain_losses = _run(bert, edge, None, steps=2)
    tap, model, losses = _run(bert, edge, {"head_skip": True}, steps=2)
    assert losses[0] == plain_losses[0]  # the map starts at zero: the first forward is the plain one
    assert torch.equal(tap.sent_hidden[0], plain.sent_hidden[0])
    assert torch.equal(tap.sent_grads[0], plain.sent_grads[0])  # and so is the gradient sent back
    assert losses[1] != plain_losses[1]  # after one step the map reads h_k
    assert float(_skip_weight(model).abs().max()) > 0
    assert len(tap.sent_hidden) == len(plain.sent_hidden)  # the map itself never crosses the wire


def test_head_skip_with_withheld_gradients_trains_the_first_blocks_locally(
    bert: TinyModel, edge: EdgeServer
) -> None:
    tap, model, _ = _run(bert, edge, WITHHELD, steps=3, trunk_lora=False)
    assert tap.sent_grads == []  # still no gradient leaves the device
    # Without the skip nothing trains the first blocks (test_privacy_wire); through it the task does.
    assert _lora_b_moved(model, first_blocks=True)
    assert not torch.allclose(tap.sent_hidden[-1], _h_k(bert, 3), atol=1e-5)
    assert float(_skip_weight(model).abs().max()) > 0


def _trained(bert: TinyModel, conn: EdgeConnection, privacy: dict | None, folder: Path) -> torch.Tensor:
    """Two withheld-gradient steps, the adapter saved in `folder`; the logits of a fixed batch after."""
    model = _open(bert, conn, privacy, trunk_lora=False)
    optimizer = model.configure_optimizer(torch.optim.AdamW, lr=5e-2)
    generator = torch.Generator().manual_seed(3)
    for _ in range(2):
        model(**make_batch("bert", generator, batch=8)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_adapter(folder)
    with torch.no_grad():
        logits = model.eval()(**make_batch("bert", torch.Generator().manual_seed(9), batch=4)).logits
    model.close()
    return logits


def _reopened_logits(
    bert: TinyModel, conn: EdgeConnection, privacy: dict | None, folder: Path
) -> torch.Tensor:
    model = SplitModel.from_pretrained(
        bert.path, edge=conn, model="bert", device_layers=DEVICE_LAYERS, head_layers=1,
        trunk_lora=False, privacy=privacy, adapter=folder,
    )  # fmt: skip
    with model, torch.no_grad():
        return model.eval()(**make_batch("bert", torch.Generator().manual_seed(9), batch=4)).logits


def test_head_skip_is_saved_beside_the_adapter_and_loaded_back(
    bert: TinyModel, conn: EdgeConnection, tmp_path: Path
) -> None:
    logits = _trained(bert, conn, WITHHELD, tmp_path / "skip")
    assert (tmp_path / "skip" / HEAD_SKIP_FILE).is_file()
    torch.testing.assert_close(_reopened_logits(bert, conn, WITHHELD, tmp_path / "skip"), logits)
    with pytest.raises(InvalidArgument, match="trained with privacy.head_skip"):
        _reopened_logits(bert, conn, {"withhold_gradients": True}, tmp_path / "skip")
    plain = _trained(bert, conn, {"withhold_gradients": True}, tmp_path / "plain")
    assert not (tmp_path / "plain" / HEAD_SKIP_FILE).exists()
    # A peft adapter alone (a federated round's global adapter): the skip keeps its map, zero here.
    torch.testing.assert_close(_reopened_logits(bert, conn, WITHHELD, tmp_path / "plain"), plain)


def test_head_skip_resumes_from_a_checkpoint(bert: TinyModel, conn: EdgeConnection, tmp_path: Path) -> None:
    model = _open(bert, conn, {"head_skip": True}, trunk_lora=True)
    optimizer = model.configure_optimizer(torch.optim.AdamW, lr=5e-2)
    model(**make_batch("bert", torch.Generator().manual_seed(3), batch=8)).loss.backward()
    optimizer.step()
    saved = _skip_weight(model)
    model.checkpoint(tmp_path / "ckpt")
    model.close()
    resumed = SplitModel.from_checkpoint(tmp_path / "ckpt", edge=conn, model_name="bert")
    with resumed:
        assert resumed.privacy.head_skip
        assert torch.equal(_skip_weight(resumed), saved)


def test_the_adapter_state_stays_peft_only(bert: TinyModel, conn: EdgeConnection) -> None:
    """The skip is not a peft module: the adapter's tensors are LoRA's alone, as a peft reader expects."""
    with _open(bert, conn, {"head_skip": True}) as skipped, _open(bert, conn, None) as plain:
        assert set(skipped.adapter_state_dict()) == set(plain.adapter_state_dict())


def test_a_head_skip_of_the_wrong_shape_is_refused(
    bert: TinyModel, conn: EdgeConnection, tmp_path: Path
) -> None:
    _trained(bert, conn, WITHHELD, tmp_path / "skip")
    save_file({"weight": torch.zeros(3, 3)}, str(tmp_path / "skip" / HEAD_SKIP_FILE))
    with pytest.raises(InvalidArgument, match=r"the head skip's weight must be \[32, 32\], got \[3, 3\]"):
        _reopened_logits(bert, conn, WITHHELD, tmp_path / "skip")


def test_generate_with_a_trained_head_skip_is_the_same_with_and_without_caches(
    tiny_models: dict[str, TinyModel], conn: EdgeConnection
) -> None:
    """With key/value caches only the new token's h_k reaches the trunk entry, and the map must apply
    to it as to the whole sequence: cached and uncached greedy decoding agree."""
    llama = tiny_models["llama"]
    torch.manual_seed(0)
    split = SplitModel.from_pretrained(
        llama.path, edge=conn, model="llama", device_layers=1, head_layers=1,
        lora_config=lora_config_for("llama"), privacy={"head_skip": True},
    )  # fmt: skip
    with split:
        optimizer = split.configure_optimizer(torch.optim.AdamW, lr=2e-2)
        generator = torch.Generator().manual_seed(1)
        for _ in range(3):
            split(**make_batch("llama", generator)).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        assert float(_skip_weight(split).abs().max()) > 0
        prompts = {"input_ids": torch.randint(1, 128, (2, 5), generator=torch.Generator().manual_seed(2))}
        cached = split.generate(**prompts, do_sample=False, max_new_tokens=6, pad_token_id=0)
        uncached = split.generate(
            **prompts, do_sample=False, use_cache=False, max_new_tokens=6, pad_token_id=0
        )
        assert cached.shape == (2, 11) and torch.equal(cached, uncached)
