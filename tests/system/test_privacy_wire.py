"""Each privacy option changes what crosses the wire as docs/privacy.md says, on a real edge: the
tensors are read back from the gRPC messages the device sent (`splitft.privacy.wire_tap.WireTap`),
and compared with the tiny BERT's own h_k computed in one process."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import AutoModel

from device_client import EdgeConnection, SplitModel
from edge_server import EdgeServer
from splitft.errors import InvalidArgument
from splitft.privacy.config import PrivacyConfig
from splitft.privacy.transforms import clip_rows
from splitft.privacy.wire_tap import WireTap
from splitft.testing.tiny import TinyModel, lora_config_for, make_batch
from tests.support.equivalence import run_equivalence
from tests.system.test_equivalence import assert_equivalent

DEVICE_LAYERS = 1


def _run(
    tiny: TinyModel, edge: EdgeServer, privacy: Any, steps: int = 1, trunk_lora: bool = True
) -> tuple[WireTap, SplitModel, list[float]]:
    """`steps` training steps of the tiny BERT on fixed batches, then one more forward; the wire tapped."""
    tap = WireTap()
    generator = torch.Generator().manual_seed(1)
    batches = [make_batch("bert", generator, batch=8) for _ in range(steps + 1)]
    losses = []
    with EdgeConnection(edge.address, insecure=True, interceptors=[tap]) as conn:
        model = _open(tiny, conn, privacy, trunk_lora)
        optimizer = model.configure_optimizer(torch.optim.AdamW, lr=5e-2)
        model.train()
        for batch in batches[:steps]:
            out = model(**batch)
            out.loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(out.loss.item())
        with torch.no_grad():
            model(**batches[steps])
        model.close()
    return tap, model, losses


def _open(tiny: TinyModel, conn: EdgeConnection, privacy: Any, trunk_lora: bool = True) -> SplitModel:
    """The tiny BERT split at DEVICE_LAYERS with one head block, from a fixed seed."""
    torch.manual_seed(0)
    return SplitModel.from_pretrained(
        tiny.path,
        edge=conn,
        model="bert",
        device_layers=DEVICE_LAYERS,
        head_layers=1,
        lora_config=lora_config_for("bert"),
        trunk_lora=trunk_lora,
        seed=5,
        privacy=privacy,
    )


@torch.no_grad()
def _h_k(tiny: TinyModel, index: int = 0) -> torch.Tensor:
    """Batch `index`'s h_k through the public weights (the LoRA adapters start at zero)."""
    generator = torch.Generator().manual_seed(1)
    batch = [make_batch("bert", generator, batch=8) for _ in range(index + 1)][-1]
    base = AutoModel.from_pretrained(str(tiny.path)).eval()
    out = base(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True
    )
    return out.hidden_states[DEVICE_LAYERS]


@pytest.fixture(scope="module")
def bert(tiny_models: dict[str, TinyModel]) -> TinyModel:
    return tiny_models["bert"]


@pytest.fixture(scope="module")
def undefended(bert: TinyModel, edge: EdgeServer) -> tuple[WireTap, SplitModel, list[float]]:
    return _run(bert, edge, None)


def test_defenses_off_send_the_blocks_output_unchanged(bert, edge, undefended) -> None:
    tap, _, losses = undefended
    torch.testing.assert_close(tap.sent_hidden[0], _h_k(bert), atol=1e-5, rtol=0)
    explicit, _, explicit_losses = _run(bert, edge, PrivacyConfig())
    for ours, theirs in zip(
        explicit.sent_hidden + explicit.sent_grads, tap.sent_hidden + tap.sent_grads, strict=True
    ):
        assert torch.equal(ours, theirs)
    assert explicit_losses == losses


def test_defenses_off_keep_the_equivalence_with_local_peft(bert, conn, tmp_path) -> None:
    assert_equivalent(run_equivalence(bert, conn, tmp_path, model_name="bert", privacy=PrivacyConfig()))


def test_activation_clip_bounds_every_token_sent(bert, edge) -> None:
    expected = _h_k(bert)
    bound = float(expected.norm(dim=-1).median()) / 2  # active on most tokens
    tap, model, _ = _run(bert, edge, {"activation_clip": bound})
    assert model.privacy.activation_clip == bound
    for sent in tap.sent_hidden:
        assert float(sent.norm(dim=-1).max()) <= bound * (1 + 1e-5)
    torch.testing.assert_close(tap.sent_hidden[0], clip_rows(expected, bound, "token"), atol=1e-5, rtol=0)
    example_tap, _, _ = _run(bert, edge, {"activation_clip": bound, "clip_scope": "example"})
    assert float(example_tap.sent_hidden[0].reshape(8, -1).norm(dim=1).max()) <= bound * (1 + 1e-5)


def test_activation_noise_has_the_documented_scale(bert, edge) -> None:
    expected = _h_k(bert)
    tap, _, _ = _run(bert, edge, {"activation_clip": 1.0, "activation_noise": 2.0})
    residual = tap.sent_hidden[0] - clip_rows(expected, 1.0, "token")
    assert float(residual.std()) == pytest.approx(2.0, rel=0.1)  # std = noise x clip
    assert not torch.equal(tap.sent_hidden[1], tap.sent_hidden[0])


def test_gradient_clip_and_noise_change_only_the_gradients(bert, edge, undefended) -> None:
    plain, _, _ = undefended
    tap, _, _ = _run(bert, edge, {"gradient_clip": 1e-4})
    torch.testing.assert_close(tap.sent_hidden[0], plain.sent_hidden[0], atol=0, rtol=0)
    assert float(plain.sent_grads[0].reshape(8, -1).norm(dim=1).max()) > 1e-4  # so the clip is active
    assert float(tap.sent_grads[0].reshape(8, -1).norm(dim=1).max()) <= 1e-4 * (1 + 1e-5)
    noisy, _, _ = _run(bert, edge, {"gradient_clip": 1e-4, "gradient_noise": 3.0})
    assert float(noisy.sent_grads[0].std()) == pytest.approx(3e-4, rel=0.1)


def test_nopeek_trains_the_device_blocks_away_without_changing_the_loss(bert, edge, undefended) -> None:
    plain, _, plain_losses = undefended
    tap, model, losses = _run(bert, edge, {"nopeek_weight": 1.0})
    assert losses == plain_losses  # the reported loss is the task's; the penalty only joins backward
    torch.testing.assert_close(tap.sent_hidden[0], plain.sent_hidden[0], atol=0, rtol=0)
    penalty = _guard_penalty(model)  # the dCor of the last training forward
    assert penalty is not None and 0 < penalty <= 1
    assert not torch.allclose(tap.sent_hidden[-1], plain.sent_hidden[-1], atol=1e-6)  # the step differed


def _guard(model: SplitModel) -> Any:
    for module in model.modules():
        guard = getattr(module, "guard", None)
        if guard is not None:
            return guard
    return None


def _guard_penalty(model: SplitModel) -> float | None:
    guard = _guard(model)
    return None if guard is None else guard.last_penalty


def test_nopeek_warmup_ramps_the_weight_up(bert, edge) -> None:
    _, model, _ = _run(bert, edge, {"nopeek_weight": 2.0, "nopeek_warmup": 4}, steps=3)
    guard = _guard(model)
    assert guard.penalized == 3 and guard.last_weight == pytest.approx(2.0 * 3 / 4)
    _, model, _ = _run(bert, edge, {"nopeek_weight": 2.0, "nopeek_warmup": 2}, steps=3)
    assert _guard(model).last_weight == pytest.approx(2.0)  # past the warm-up: the full weight


def _lora_b_moved(model: SplitModel, first_blocks: bool) -> bool:
    """Whether a LoRA B matrix (zero at initialisation) of the device's first blocks (or of the others
    on the device: the head) has moved."""
    norms = [
        float(p.detach().abs().max())
        for name, p in model.named_parameters()
        if "lora_B" in name and (".layer.0." in name) == first_blocks
    ]
    assert norms, "no LoRA B found"
    return max(norms) > 0


def test_withheld_gradients_never_cross_the_wire(bert, edge) -> None:
    with pytest.raises(InvalidArgument, match="privacy.withhold_gradients.*trunk_lora false"):
        _run(bert, edge, {"withhold_gradients": True})  # the trunk adapter would have nothing to train on
    frozen, _, _ = _run(bert, edge, None, steps=2, trunk_lora=False)
    tap, model, _ = _run(bert, edge, {"withhold_gradients": True}, steps=2, trunk_lora=False)
    assert frozen.sent_grads and tap.sent_grads == []  # the labels' signal stays on the device
    torch.testing.assert_close(tap.sent_hidden[0], frozen.sent_hidden[0], atol=0, rtol=0)
    # Nothing trains the device's first blocks: after two steps they still send the public blocks' h_k.
    torch.testing.assert_close(tap.sent_hidden[-1], _h_k(bert, 2), atol=1e-5, rtol=0)
    assert _lora_b_moved(model, first_blocks=False)  # the head trains on the labels, locally
    assert not _lora_b_moved(model, first_blocks=True)


def test_withheld_gradients_with_nopeek_train_the_blocks_locally(bert, edge) -> None:
    privacy = {"withhold_gradients": True, "nopeek_weight": 1.0}
    tap, model, _ = _run(bert, edge, privacy, steps=2, trunk_lora=False)
    assert tap.sent_grads == []
    assert _guard_penalty(model) is not None
    assert not torch.allclose(tap.sent_hidden[-1], _h_k(bert, 2), atol=1e-4)  # the penalty moved h_k


def test_cca_penalty_trains_the_device_blocks_away_without_changing_the_loss(bert, edge, undefended) -> None:
    plain, _, plain_losses = undefended
    tap, model, losses = _run(bert, edge, {"cca_weight": 1.0})
    assert losses == plain_losses  # the reported loss is the task's; the penalty only joins backward
    torch.testing.assert_close(tap.sent_hidden[0], plain.sent_hidden[0], atol=0, rtol=0)
    leak = _guard(model).last_leak  # against the public blocks' h_k: all but 1 before any step
    assert leak is not None and 0.9 < leak <= 1.0 + 1e-6
    assert not torch.allclose(tap.sent_hidden[-1], plain.sent_hidden[-1], atol=1e-6)  # the step differed


def test_private_warmup_sends_nothing_and_moves_only_the_first_blocks(bert, edge) -> None:
    tap, model, losses = _run(bert, edge, {"cca_weight": 1.0, "private_warmup": 2}, steps=2)
    assert _guard(model).warmed == 2
    assert len(tap.sent_hidden) == 1 and tap.sent_grads == []  # only the inference forward after it
    assert all(0 < loss <= 1.0 + 1e-6 for loss in losses)  # the warm-up's loss is the penalty
    assert _lora_b_moved(model, first_blocks=True) and not _lora_b_moved(model, first_blocks=False)
    assert not torch.allclose(tap.sent_hidden[0], _h_k(bert, 2), atol=1e-4)  # the first h_k sent moved
    after, _, _ = _run(bert, edge, {"cca_weight": 1.0, "private_warmup": 1}, steps=2)
    assert len(after.sent_hidden) == 2 and len(after.sent_grads) == 1  # past the warm-up: training sends


def test_cca_target_stops_the_penalty_at_the_target(bert, edge) -> None:
    _, _, losses = _run(bert, edge, {"cca_weight": 1.0, "private_warmup": 2}, steps=2)
    leak = losses[0]  # the warm-up's first loss is the penalty at weight 1: the leak of the public blocks
    assert 0.9 < leak < 0.99
    below = leak - 0.05  # the penalty is what lies above the target
    _, _, partial = _run(bert, edge, {"cca_weight": 1.0, "private_warmup": 2, "cca_target": below}, steps=2)
    assert partial[0] == pytest.approx(leak - below, abs=1e-6)
    held = {"cca_weight": 1.0, "private_warmup": 2, "cca_target": leak + 0.005}  # already below it
    tap, model, held_losses = _run(bert, edge, held, steps=2)
    assert held_losses == [0.0, 0.0]
    assert not _lora_b_moved(model, first_blocks=True)  # nothing pushed the blocks: still the public h_k
    torch.testing.assert_close(tap.sent_hidden[0], _h_k(bert, 2), atol=1e-5, rtol=0)


def test_warmup_consistency_runs_a_public_trunk_on_the_device(bert, edge) -> None:
    plain_tap, _, plain = _run(bert, edge, {"cca_weight": 1.0, "private_warmup": 2}, steps=2)
    privacy = {"cca_weight": 1.0, "private_warmup": 2, "warmup_consistency": 5.0}
    tap, model, losses = _run(bert, edge, privacy, steps=2)
    assert len(tap.sent_hidden) == 1 and tap.sent_grads == []  # still nothing sent in the warm-up
    # Before the first step the blocks are the public ones, so the public trunk agrees with itself.
    assert losses[0] == pytest.approx(plain[0], abs=1e-6)
    consistency = _guard(model).last_consistency  # after one step the blocks moved, and the trunk's view
    assert consistency is not None and consistency > 0
    assert losses[1] != pytest.approx(plain[1], abs=1e-6)
    assert not torch.equal(tap.sent_hidden[0], plain_tap.sent_hidden[0])  # the term changed the step


WARMED = {"cca_weight": 1.0, "private_warmup": 2}


def test_warmup_task_trains_the_head_through_a_public_trunk_and_sends_nothing(bert, edge) -> None:
    _, plain_model, plain = _run(bert, edge, WARMED, steps=2)
    tap, model, losses = _run(bert, edge, {**WARMED, "warmup_task": 0.5}, steps=2)
    assert len(tap.sent_hidden) == 1 and tap.sent_grads == []  # only the inference forward after it
    assert _guard(model).warmed == 2 and _guard(model).last_task is not None
    # The head trains on the task during the warm-up only with the term; the first blocks in both.
    assert _lora_b_moved(model, first_blocks=False) and not _lora_b_moved(plain_model, first_blocks=False)
    assert _lora_b_moved(model, first_blocks=True)
    assert losses[1] != pytest.approx(plain[1], abs=1e-6)  # the term changed the step
    # The first forward's loss is the same penalty plus 0.5 x the task's loss (the first of the run).
    _, first, first_losses = _run(bert, edge, {**WARMED, "warmup_task": 0.5}, steps=1)
    task = _guard(first).last_task
    assert task is not None and task > 0.1  # a cross-entropy over NUM_LABELS classes from an untrained head
    assert first_losses[0] == pytest.approx(plain[0] + 0.5 * task, abs=1e-5)


def test_warmup_task_refuses_a_forward_without_labels(bert, edge) -> None:
    tap = WireTap()
    batch = make_batch("bert", torch.Generator().manual_seed(1), batch=8)
    unlabelled = {k: v for k, v in batch.items() if k != "labels"}
    with EdgeConnection(edge.address, insecure=True, interceptors=[tap]) as conn:
        with pytest.raises(InvalidArgument, match=r"privacy\.warmup_task needs privacy\.private_warmup > 0"):
            _open(bert, conn, {"cca_weight": 1.0, "warmup_task": 1.0})
        model = _open(bert, conn, {**WARMED, "warmup_task": 1.0})
        model.train()
        with pytest.raises(InvalidArgument, match=r"privacy\.warmup_task: .* needs labels"):
            model(**unlabelled)
        assert _guard(model).warmed == 0 and tap.sent_hidden == []
        assert model(**batch).loss is not None  # with labels, the warm-up forward runs
        with torch.no_grad():
            model(**unlabelled)  # inference needs no labels (and is sent: no warm-up there)
        model.close()
    assert len(tap.sent_hidden) == 1 and tap.sent_grads == []
