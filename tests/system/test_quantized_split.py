"""Quantized frozen spans across a real split: a quantized edge trunk and a quantized device span
train over gRPC close to fp32, cross-session batching on a quantized trunk matches batching off, and
what cannot run quantized is refused through the SDK, gRPC and the CLI."""

from __future__ import annotations

import threading
from contextlib import ExitStack

import pytest
import torch

from device_client import EdgeConnection, SplitModel
from edge_server import EdgeConfig, EdgeServer
from splitft.errors import FailedPrecondition, InvalidArgument
from splitft.methods.taskedge import TaskEdgeConfig
from splitft.model.quantize import Int8Linear
from splitft.testing.tiny import make_batch, save_tiny_model
from tests.support.split import split_llama

HIDDEN = 64
STEPS = 5


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return save_tiny_model("llama", tmp_path_factory.mktemp("quantized") / "llama", hidden=HIDDEN)


def _serve(tiny, quantize: str, *, batching: bool = False, window_ms: float = 20.0) -> EdgeServer:
    config = EdgeConfig(
        model_dirs=[f"llama={tiny.path}"],
        port=0,
        insecure=True,
        quantize=quantize,
        batching=batching,
        batch_window_ms=window_ms,
    )
    return EdgeServer(config).start()


@pytest.fixture(scope="module")
def edges(llama):
    servers = {scheme: _serve(llama, scheme) for scheme in ("none", "int8", "nf4")}
    yield servers
    for server in servers.values():
        server.stop(grace=1)


def _train(tiny, edge: EdgeServer, quantize: str = "none") -> list[float]:
    """Losses of STEPS steps on fixed batches (same seeds and data whatever is quantized)."""
    seeds = [torch.Generator().manual_seed(i % 2) for i in range(STEPS)]
    batches = [make_batch("llama", generator, batch=4, tokens=12) for generator in seeds]
    with EdgeConnection(edge.address, insecure=True) as conn:
        model = split_llama(tiny, conn, seed=0, quantize=quantize)
        optimizer = model.configure_optimizer(torch.optim.AdamW, lr=1e-2)
        losses = []
        for batch in batches:
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
        if quantize == "int8":
            assert isinstance(model.peft_model.get_base_model().model.layers[0].mlp.up_proj, Int8Linear)
        model.close()
    return losses


@pytest.mark.parametrize(("scheme", "gap"), [("int8", 0.01), ("nf4", 0.03)])
def test_a_quantized_edge_trains_a_split_session_close_to_fp32(llama, edges, scheme, gap):
    reference = _train(llama, edges["none"])
    losses = _train(llama, edges[scheme])
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[0] == pytest.approx(reference[0], rel=gap)
    assert losses[-1] == pytest.approx(reference[-1], rel=3 * gap)
    assert losses[-1] < losses[0]
    span = edges[scheme].registry.get("llama").span
    assert span.quantization is not None and span.quantization.scheme == scheme


def test_the_trunk_adapter_trains_on_a_quantized_trunk(llama, edges):
    with EdgeConnection(edges["int8"].address, insecure=True) as conn:
        model = split_llama(llama, conn, seed=0)
        optimizer = model.configure_optimizer(torch.optim.AdamW, lr=1e-2)
        before = model._trunk.export_adapter()
        for i in range(2):
            model(**make_batch("llama", torch.Generator().manual_seed(i))).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        after = model._trunk.export_adapter()
        model.close()
    lora_b = [name for name in before if "lora_B" in name]
    assert lora_b and all(float(before[n].abs().sum()) == 0 for n in lora_b)  # peft starts B at zero
    assert all(float(after[n].abs().sum()) > 0 for n in lora_b)


@pytest.mark.parametrize("scheme", ["int8", "nf4"])
def test_a_quantized_device_span_trains_close_to_fp32(llama, edges, scheme):
    reference = _train(llama, edges["none"])
    losses = _train(llama, edges["none"], quantize=scheme)
    assert losses[0] == pytest.approx(reference[0], rel=0.03)
    assert losses[-1] < losses[0]


def _session(model: SplitModel, seed: int, results: dict, start: threading.Barrier) -> None:
    generator = torch.Generator().manual_seed(100 + seed)
    optimizer = model.configure_optimizer(torch.optim.AdamW, lr=1e-2)
    losses = []
    for _ in range(3):
        batch = make_batch("llama", generator, batch=2, tokens=12)
        start.wait()  # the three sessions' forwards arrive together: the batcher shares their passes
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    results[seed] = (losses, model._trunk.export_adapter())


def _concurrent(edge: EdgeServer, tiny) -> dict:
    results: dict = {}
    start = threading.Barrier(3, timeout=60)
    with ExitStack() as stack:
        # Built on this thread, each right after seeding: the device LoRA draws from the global RNG.
        conns = [stack.enter_context(EdgeConnection(edge.address, insecure=True)) for _ in range(3)]
        models = {
            seed: stack.enter_context(split_llama(tiny, conn, seed=seed))
            for seed, conn in zip((1, 2, 3), conns, strict=True)
        }
        threads = [threading.Thread(target=_session, args=(models[s], s, results, start)) for s in models]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    assert sorted(results) == [1, 2, 3], "a session failed"
    return results


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["int8", "nf4"])
def test_batching_on_a_quantized_trunk_matches_batching_off(llama, scheme):
    batched = _serve(llama, scheme, batching=True, window_ms=400.0)
    alone = _serve(llama, scheme, batching=False)
    try:
        on, off = _concurrent(batched, llama), _concurrent(alone, llama)
        stats = batched.sessions.batcher.stats
    finally:
        batched.stop(grace=1)
        alone.stop(grace=1)
    assert stats.shared_passes >= 1 and stats.shared_forwards > stats.shared_passes, stats
    for seed in on:
        assert on[seed][0] == pytest.approx(off[seed][0], abs=1e-5)
        for name, tensor in on[seed][1].items():
            assert torch.allclose(tensor, off[seed][1][name], atol=1e-5), (seed, name)


def test_a_quantized_edge_refuses_selection_methods(llama, edges):
    with EdgeConnection(edges["int8"].address, insecure=True) as conn:
        refused = r"serves the trunk quantized \(int8\): selection methods"
        with pytest.raises(FailedPrecondition, match=refused):
            SplitModel.from_pretrained(
                llama.path, edge=conn, model="llama", device_layers=1, head_layers=1, method=TaskEdgeConfig()
            )
    assert edges["int8"].sessions.count() == 0


def test_the_sdk_refuses_what_it_cannot_quantize(llama, edges):
    with EdgeConnection(edges["none"].address, insecure=True) as conn:
        unknown = "unknown quantization 'int4'.*available here: none, int8, nf4"
        with pytest.raises(InvalidArgument, match=unknown):
            split_llama(llama, conn, quantize="int4")
        with pytest.raises(InvalidArgument, match="cannot be combined with a selection method"):
            SplitModel.from_pretrained(
                llama.path, edge=conn, model="llama", device_layers=1, head_layers=1,
                method=TaskEdgeConfig(), quantize="int8",
            )  # fmt: skip
    assert edges["none"].sessions.count() == 0


def test_the_cli_refuses_a_model_it_cannot_quantize(tmp_path, capsys):
    from splitft.cli import main

    gpt2 = save_tiny_model("gpt2", tmp_path / "gpt2")
    argv = ["edge", "serve", "--insecure", "--port", "0", "--model-dir", str(gpt2.path)]
    assert main([*argv, "--quantize", "nf4"]) == 2
    assert "no nn.Linear layers to quantize" in " ".join(capsys.readouterr().err.split())
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--quantize", "int4"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'int4'" in capsys.readouterr().err
