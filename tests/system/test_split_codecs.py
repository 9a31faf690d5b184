"""Per-direction codecs on a real split run: what each direction sends, and training still works."""

from __future__ import annotations

import pytest
import torch

from device_client import EdgeConnection, SplitModel
from edge_server import EdgeServer
from splitft.errors import InvalidArgument
from splitft.testing.tiny import lora_config_for, make_batch

STEPS = 6


def _run(tiny, edge: EdgeServer, codec, steps: int = STEPS) -> tuple[list[float], int]:
    """Losses of `steps` training steps on fixed batches, and bytes of the last step both ways."""
    batches = [
        make_batch("llama", torch.Generator().manual_seed(i % 2), batch=8, tokens=16) for i in range(steps)
    ]
    with EdgeConnection(edge.address, insecure=True) as conn:
        torch.manual_seed(0)
        model = SplitModel.from_pretrained(
            tiny.path, edge=conn, model="llama", device_layers=1, head_layers=1,
            lora_config=lora_config_for("llama"), seed=4, codec=codec,
        )  # fmt: skip
        opt = model.configure_optimizer(torch.optim.AdamW, lr=1e-2)
        model.train()
        losses, before = [], 0
        for batch in batches:
            before = model.stats.bytes_sent + model.stats.bytes_received
            loss = model(**batch).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
        last = model.stats.bytes_sent + model.stats.bytes_received - before
        model.close()
    return losses, last


CODECS = [
    "int8",
    "int8:sr",
    {"activations": "int8", "gradients": "int8:sr"},
    {"activations": "int8", "gradients": "topk:0.05"},
    {"activations": "int8", "gradients": "topk:0.05:noef"},
    {"activations": "fp16", "gradients": "lowrank:2"},
    {"activations": "int8", "gradients": "lowrank:2:noef"},
    "int4",
    {"activations": "int4", "gradients": "lowrank:2"},
]


@pytest.mark.parametrize("codec", CODECS, ids=str)
def test_lossy_codecs_train_and_send_fewer_bytes(tiny_models, edge, codec) -> None:
    tiny = tiny_models["llama"]
    raw_losses, raw_bytes = _run(tiny, edge, "raw")
    losses, sent = _run(tiny, edge, codec)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[0] == pytest.approx(raw_losses[0], rel=0.05)  # the first forward is nearly raw's
    assert losses[-1] < losses[0]  # it still learns (the batches repeat)
    assert sent < 0.6 * raw_bytes


def test_each_direction_uses_its_own_codec_on_both_sides(tiny_models, edge) -> None:
    """Headers name the codec per tensor: int8 for activations, topk for gradients, raw for masks."""
    from tests.system.test_what_crosses_the_wire import Recorder, _requests_of

    recorder = Recorder()
    tiny = tiny_models["llama"]
    with EdgeConnection(edge.address, insecure=True, interceptors=[recorder]) as conn:
        model = SplitModel.from_pretrained(
            tiny.path, edge=conn, model="llama", device_layers=1, head_layers=1,
            lora_config=lora_config_for("llama"), codec={"activations": "int8", "gradients": "topk:0.1"},
        )  # fmt: skip
        model(**make_batch("llama", torch.Generator().manual_seed(0))).loss.backward()
        model.close()
    (train,) = [call for call in recorder.calls if call.method == "Train"]
    seen = set()
    for messages in (train.requests, train.responses):
        for group in _requests_of(messages):
            for message in group:
                if message.WhichOneof("item") == "part" and message.part.WhichOneof("part") == "tensor":
                    seen.add((message.part.tensor.name, message.part.tensor.codec))
    assert seen == {
        ("hidden", "int8"),
        ("attention_mask", "raw"),
        ("position_ids", "raw"),
        ("grad", "topk:0.1"),
    }


@pytest.mark.parametrize(
    "codec", ["topk:0.01", {"activations": "int8", "weights": "raw"}, {"gradients": "lowrank:0"}, 8]
)
def test_bad_codec_is_refused_before_anything_is_sent(tiny_models, edge, codec) -> None:
    with EdgeConnection(edge.address, insecure=True) as conn:
        with pytest.raises(InvalidArgument):
            SplitModel.from_pretrained(
                tiny_models["llama"].path, edge=conn, model="llama", device_layers=1,
                lora_config=lora_config_for("llama"), codec=codec,
            )  # fmt: skip
        assert conn.stats.bytes_sent == 0
