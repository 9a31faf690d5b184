"""With dropout active in the trunk, a session's results depend only on its own seed and data."""

from __future__ import annotations

import threading

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from device_client import EdgeConnection, SplitModel
from device_client.trunk import RemoteTrunk
from splitft.compress import parse_codecs
from splitft.local.launch import EdgeProcess
from splitft.testing.tiny import lora_config_for, make_batch
from splitft.v1 import dataplane_pb2 as pb


def _train(address: str, model_dir, seed: int, steps: int = 4) -> list[float]:
    with EdgeConnection(address, insecure=True) as conn:
        torch.manual_seed(seed)
        model = SplitModel.from_pretrained(
            model_dir,
            edge=conn,
            model="bert",
            device_layers=1,
            head_layers=1,
            lora_config=lora_config_for("bert"),
        )
        opt = model.configure_optimizer(torch.optim.AdamW, lr=1e-2)
        generator = torch.Generator().manual_seed(seed)
        losses = []
        model.train()
        for _ in range(steps):
            loss = model(**make_batch("bert", generator)).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
        model.close()
        return losses


def _neighbour(address: str, stop: threading.Event) -> None:
    """Drive training forwards with dropout on another session through the raw protocol.

    It draws its inputs from a private generator so that, in this one test process, it touches the
    edge's randomness only, never the device-side global RNG of the session under test.
    """
    generator = torch.Generator().manual_seed(5)
    with EdgeConnection(address, insecure=True) as conn:
        opened = conn.call(
            "OpenSession",
            pb.OpenSessionRequest(model="bert", device_layers=1, head_layers=1, codec="raw", seed=99),
        )
        trunk = RemoteTrunk(conn, opened, parse_codecs("raw"))
        while not stop.is_set():
            hidden = torch.randn(4, 12, 32, generator=generator)
            trunk.forward(hidden, {}, training=True, requires_grad=False, need_input_grad=False)
        trunk.close()


@pytest.mark.slow
def test_trunk_dropout_is_reproducible_per_session_under_concurrency(tmp_path):
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=128,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        hidden_dropout_prob=0.3,
        attention_probs_dropout_prob=0.3,
        num_labels=3,
    )
    BertForSequenceClassification(config).save_pretrained(tmp_path / "bert")
    # The edge runs in its own process, as in production: in one process the device's dropout and
    # the edge's would share torch's global RNG and the test would measure that, not the edge.
    server = EdgeProcess([f"bert={tmp_path / 'bert'}"], threads=1).start()
    try:
        solo = _train(server.address, tmp_path / "bert", seed=11)
        # A noisy neighbour runs dropout on the same edge at the same time; our numbers must not move.
        stop = threading.Event()
        neighbour = threading.Thread(target=_neighbour, args=(server.address, stop))
        neighbour.start()
        try:
            again = _train(server.address, tmp_path / "bert", seed=11)
        finally:
            stop.set()
            neighbour.join()
        other_seed = _train(server.address, tmp_path / "bert", seed=12)
    finally:
        server.stop()
    assert again == solo
    assert other_seed != solo  # dropout is really active
