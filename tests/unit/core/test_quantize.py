"""Quantized frozen spans (splitft.model.quantize): which schemes run where, what they store, and that
LoRA trains on them while the gradient reaches the span's input, as the edge needs."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model
from peft.tuners.lora.torchao import TorchaoLoraLinear

from splitft.errors import InvalidArgument
from splitft.model.loading import device_view, edge_view, load_span
from splitft.model.quantize import (
    Int8Linear,
    availability,
    available_schemes,
    check_available,
    check_quantize,
    compute_dtype,
    is_quantized,
    storage_pointers,
    weight_bytes,
)
from splitft.model.schemes import QUANTIZE_SCHEMES
from splitft.model.spans import Skipped
from splitft.testing.tiny import lora_config_for, save_tiny_model

HIDDEN = 64


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return save_tiny_model("llama", tmp_path_factory.mktemp("q") / "llama", hidden=HIDDEN)


def _trunk(tiny, scheme: str):
    return load_span(tiny.path, lambda r, f: edge_view(r, f, 1, 4), init_missing=False, quantize=scheme)


def test_every_scheme_runs_on_this_cpu():
    assert available_schemes("cpu") == list(QUANTIZE_SCHEMES)


@pytest.mark.parametrize("scheme", ["int8", "nf4"])
def test_a_platform_without_the_scheme_is_refused_naming_what_is_available(scheme):
    ok, reason = availability(scheme, "mps")
    assert not ok and "cpu and cuda" in reason
    refused = rf"--quantize {scheme} is not available on mps.*available here: none"
    with pytest.raises(InvalidArgument, match=refused):
        check_available(scheme, "mps")
    if not torch.cuda.is_available():  # this machine: the library is installed, CUDA is not
        with pytest.raises(InvalidArgument, match="CUDA is not available here; available here: none"):
            check_available(scheme, "cuda")


def test_unknown_schemes_and_selection_methods_are_refused():
    with pytest.raises(InvalidArgument, match="unknown quantization 'int4'; known: none, int8, nf4"):
        check_available("int4", "cpu")
    with pytest.raises(InvalidArgument, match="cannot be combined with a selection method"):
        check_quantize("int8", selection=True)
    check_quantize("none", selection=True)


@pytest.mark.parametrize(("scheme", "most"), [("int8", 0.3), ("nf4", 0.2)])
def test_block_weights_shrink_and_nothing_else_changes(llama, scheme, most):
    plain, quantized = _trunk(llama, "none"), _trunk(llama, scheme)
    report = quantized.quantization
    assert plain.quantization is None and report is not None
    assert report.layers == 3 * 7  # blocks 1..3, 7 projections each
    assert report.bytes_before == weight_bytes(plain.root) - weight_bytes(plain.root.model.rotary_emb)
    assert report.bytes_after <= most * report.bytes_before
    assert weight_bytes(quantized.root) < most * weight_bytes(plain.root) + 4096  # norms: a few KB
    assert compute_dtype(quantized.root) == torch.float32
    layer = quantized.root.model.layers[1]
    assert torch.equal(layer.input_layernorm.weight, plain.root.model.layers[1].input_layernorm.weight)


def test_a_device_span_keeps_embeddings_and_head_unquantized(llama):
    def cut(root, family):
        device_view(root, family, 1, 3, Skipped("trunk"))

    plain = load_span(llama.path, cut, init_missing=True)
    span = load_span(llama.path, cut, init_missing=True, quantize="int8")
    assert span.quantization is not None and span.quantization.layers == 2 * 7  # blocks 0 and 3
    assert isinstance(span.root.model.layers[0].mlp.down_proj, Int8Linear)
    assert torch.equal(span.root.lm_head.weight, plain.root.lm_head.weight)
    assert torch.equal(span.root.model.embed_tokens.weight, plain.root.model.embed_tokens.weight)


def test_gpt2_blocks_have_no_linear_layers_to_quantize(tmp_path):
    gpt2 = save_tiny_model("gpt2", tmp_path / "gpt2")
    with pytest.raises(InvalidArgument, match="no nn.Linear layers to quantize"):
        load_span(gpt2.path, lambda r, f: edge_view(r, f, 1, 4), init_missing=False, quantize="nf4")


def _train_forward(span, lora: bool, seed: int = 0):
    """The edge's work: LoRA on the trunk, a forward, a backward to the input activations."""
    root = get_peft_model(span.root, lora_config_for("llama")).get_base_model() if lora else span.root
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(2, 10, HIDDEN, generator=generator, requires_grad=True)
    saved: list[int] = []  # bytes autograd keeps for the backward, the parameters not counted
    params = {ptr for p in root.parameters() for ptr in storage_pointers(p)}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if not is_quantized(tensor) and tensor.untyped_storage().data_ptr() not in params:
            saved.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = span.family.run_trunk(root, hidden, None, None, 1, 4)
    out.pow(2).mean().backward()
    grads = [p.grad for n, p in root.named_parameters() if "lora_B" in n]
    return out.detach(), hidden.grad, grads, sum(saved), root


@pytest.mark.parametrize(("scheme", "tolerance"), [("int8", 0.01), ("nf4", 0.05)])
def test_lora_trains_on_quantized_blocks_and_the_input_gradient_flows(llama, scheme, tolerance):
    out, grad, _, saved, _ = _train_forward(_trunk(llama, "none"), lora=True)
    q_out, q_grad, lora_grads, q_saved, root = _train_forward(_trunk(llama, scheme), lora=True)
    assert (q_out - out).norm() / out.norm() < tolerance
    assert q_grad is not None and (q_grad - grad).norm() / grad.norm() < 2 * tolerance
    assert lora_grads and all(g is not None for g in lora_grads)
    # lora_B starts at zero, so its gradient is what the quantized layers passed back.
    assert all(float(g.abs().sum()) > 0 for g in lora_grads)
    if scheme == "int8":
        assert isinstance(root.model.layers[1].self_attn.q_proj, TorchaoLoraLinear)
    # The graph keeps no unquantized copy of a weight: what the same forward keeps in fp32.
    assert q_saved == saved


def test_int8_linear_in_blocks_of_rows_equals_torchaos_linear_and_its_backward(monkeypatch):
    from splitft.model import quantize

    torch.manual_seed(0)
    layer = quantize._int8(torch.nn.Linear(96, 70, bias=False))
    monkeypatch.setattr(quantize, "_DEQUANTIZED_ELEMENTS", 96 * 16)  # 5 blocks: 16 rows each, 6 left
    assert len(quantize._row_chunks(layer.weight)) == 5
    x = torch.randn(3, 7, 96, requires_grad=True)
    out = layer(x)
    # The same dot products, but a GEMM over fewer rows may block the reduction differently on some
    # CPUs (bit-equal on the Intel CI machine, one float32 ulp apart on an AMD EPYC): float32 rounding.
    torch.testing.assert_close(out, torch.nn.functional.linear(x, layer.weight), rtol=1e-6, atol=1e-6)
    grad = torch.randn_like(out)
    out.backward(grad)
    assert torch.allclose(x.grad, grad @ layer.weight.dequantize(), atol=1e-6)


def test_int8_linear_reuses_one_scratch_per_thread_and_allocates_no_dequantized_rows():
    from torch.profiler import ProfilerActivity, profile

    from splitft.model import quantize

    torch.manual_seed(0)
    layer = quantize._int8(torch.nn.Linear(512, 1408, bias=False))
    assert len(quantize._row_chunks(layer.weight)) == 3  # 512 rows of 512 columns per 1 MiB block
    x = torch.randn(1, 32, 512, requires_grad=True)
    layer(x).sum().backward()  # the thread's scratch is made here
    scratch = quantize._scratch_rows(512, 512, torch.float32, torch.device("cpu")).data_ptr()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = layer(x)
        out.backward(torch.ones_like(out))
    largest = max(e.cpu_memory_usage for e in prof.events())
    # The output (32 x 1408) and the input's gradient (32 x 512) are the largest blocks allocated:
    # no 1 MiB block of dequantized rows per chunk, which glibc's malloc would keep resident.
    assert largest == 32 * 1408 * 4
    assert quantize._scratch_rows(512, 512, torch.float32, torch.device("cpu")).data_ptr() == scratch


def test_int8_linear_is_correct_in_concurrent_threads_each_with_its_own_scratch():
    import threading

    from splitft.model import quantize

    torch.manual_seed(0)
    layer = quantize._int8(torch.nn.Linear(256, 2048, bias=False))  # 2 blocks of 1024 rows
    dequantized = layer.weight.dequantize()
    start = threading.Barrier(4)
    results: dict[int, tuple[float, float, int]] = {}

    def run(seed: int) -> None:
        x = torch.randn(4, 256, generator=torch.Generator().manual_seed(seed), requires_grad=True)
        start.wait()  # the four threads step at once, their blocks of rows interleaving
        out_error = grad_error = 0.0
        for _ in range(20):
            x.grad = None
            out = layer(x)
            out.backward(out.detach())
            with torch.no_grad():
                reference = torch.nn.functional.linear(x, layer.weight)
                out_error = max(out_error, float((out - reference).abs().max()))
                grad_error = max(grad_error, float((x.grad - out @ dequantized).abs().max()))
        ptr = quantize._scratch_rows(1, 256, torch.float32, torch.device("cpu")).data_ptr()
        results[seed] = (out_error, grad_error, ptr)

    threads = [threading.Thread(target=run, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # A scratch written by two threads at once would give errors of the outputs' size (about 1).
    assert len(results) == 4 and all(o < 1e-4 and g < 1e-4 for o, g, _ in results.values()), results
    assert len({ptr for *_, ptr in results.values()}) == 4  # one scratch per thread
