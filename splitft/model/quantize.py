"""Quantized frozen spans: the linear layers of a loaded span's blocks stored in int8 or NF4.

Only the frozen block weights are quantized (attention and MLP projections): embeddings, the head
and norms stay in the span's dtype, and the activations and LoRA adapters too. peft trains LoRA on
top of the quantized layers and gradients flow back to the blocks' inputs through them, which the
split needs (the edge returns the gradient of its input activations).

Libraries, one per scheme (see docs/architecture.md, "Quantized spans", for the measurements):

* `int8`: torchao's int8 weight-only tensor subclass (`Int8WeightOnlyConfig`, one scale per output
  row), CPU and CUDA. The weight stays an `nn.Linear` parameter and its forward holds no state, so
  one quantized trunk serves every session at once; peft wraps it with its own `TorchaoLoraLinear`.
  `Int8Linear` only changes what autograd keeps (see `_DequantizeForBackward`).
* `nf4`: bitsandbytes' `Linear4bit` with NF4 and double-quantized scales (QLoRA's format), CPU
  (bitsandbytes has a CPU backend since 0.48) and CUDA. Its backward dequantizes the weight again
  and keeps nothing else.
"""

from __future__ import annotations

import importlib.metadata
import logging
import threading
import warnings
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from splitft.errors import FailedPrecondition, InvalidArgument
from splitft.model.families import Family
from splitft.model.schemes import QUANTIZE_SCHEMES

logger = logging.getLogger(__name__)

LIBRARIES = {"int8": "torchao", "nf4": "bitsandbytes"}
_PLATFORMS = ("cpu", "cuda")  # where each library's kernels exist (and were run: CPU here, CUDA on a GPU)
_MIN_VERSIONS = {"torchao": (0, 18), "bitsandbytes": (0, 49)}  # as pyproject's `quantize` extra


@dataclass(frozen=True)
class QuantizeReport:
    """What `quantize_blocks` did to a span: for logs, benchmarks and the memory figures."""

    scheme: str
    library: str  # name and version
    layers: int  # linear layers quantized
    bytes_before: int  # the blocks' weight bytes before (parameters and buffers)
    bytes_after: int

    @property
    def ratio(self) -> float:
        """bytes after / bytes before."""
        return self.bytes_after / self.bytes_before if self.bytes_before else 1.0


def _library_version(name: str) -> tuple[int, ...] | None:
    try:
        text = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None
    return tuple(int(p) for p in text.split("+")[0].split(".")[:2] if p.isdigit())


def availability(scheme: str, device: torch.device | str) -> tuple[bool, str]:
    """Whether `scheme` can quantize a span on `device` here, and if not why."""
    if scheme not in QUANTIZE_SCHEMES:
        return False, f"unknown quantization {scheme!r}; known: {', '.join(QUANTIZE_SCHEMES)}"
    if scheme == "none":
        return True, ""
    kind = torch.device(device).type
    library = LIBRARIES[scheme]
    if kind not in _PLATFORMS:
        return False, f"{scheme} ({library}) runs on {' and '.join(_PLATFORMS)}, not on {kind}"
    version = _library_version(library)
    floor = _MIN_VERSIONS[library]
    if version is None:
        return False, f"{scheme} needs {library} (pip install 'splitft[quantize]')"
    if version < floor:
        shown = ".".join(map(str, floor))
        return False, f"{scheme} needs {library} >= {shown}, found {'.'.join(map(str, version))}"
    if kind == "cuda" and not torch.cuda.is_available():
        return False, "CUDA is not available here"
    return True, ""


def available_schemes(device: torch.device | str) -> list[str]:
    """The schemes `availability` accepts on `device`."""
    return [s for s in QUANTIZE_SCHEMES if availability(s, device)[0]]


def check_available(scheme: str, device: torch.device | str) -> None:
    """InvalidArgument naming the schemes that are available, unless `scheme` is."""
    ok, reason = availability(scheme, device)
    if not ok:
        raise InvalidArgument(
            f"--quantize {scheme} is not available on {torch.device(device).type}: {reason}; "
            f"available here: {', '.join(available_schemes(device))}"
        )


def check_quantize(scheme: str, *, selection: bool, device: torch.device | str = "cpu") -> None:
    """InvalidArgument unless `scheme` is available on `device` and fits what trains (`selection`:
    a selection method, which trains the frozen weights themselves, so they cannot be quantized)."""
    check_available(scheme, device)
    if selection and scheme != "none":
        raise InvalidArgument(
            f"quantize={scheme!r} cannot be combined with a selection method: it trains entries of the "
            "frozen weights, which must stay unquantized; use LoRA, or quantize='none'"
        )


def check_selection_allowed(quantization: QuantizeReport | None) -> None:
    """FailedPrecondition when a selection method would train a span stored quantized (the edge's
    answer: its trunk is what it is)."""
    if quantization is not None:
        raise FailedPrecondition(
            f"this edge serves the trunk quantized ({quantization.scheme}): selection methods train "
            "the frozen weights themselves and need them unquantized; use LoRA, or an edge started "
            "with --quantize none"
        )


def tensor_bytes(tensor: torch.Tensor) -> int:
    """Bytes a (possibly quantized) tensor holds: a tensor subclass's inner tensors, bitsandbytes'
    4-bit quantization state included."""
    inner = _inner_tensors(tensor)
    if inner is not None:
        return sum(tensor_bytes(t) for t in inner)
    total = tensor.numel() * tensor.element_size()
    state = getattr(tensor, "quant_state", None)  # bitsandbytes' Params4bit: absmax and its own scales
    if state is not None:
        total += sum(v.numel() * v.element_size() for v in state.as_dict().values() if torch.is_tensor(v))
    return total


def _inner_tensors(tensor: torch.Tensor) -> list[torch.Tensor] | None:
    flatten = getattr(tensor, "__tensor_flatten__", None)
    if flatten is None or type(tensor) in (torch.Tensor, nn.Parameter):
        return None
    names, _ = flatten()
    return [getattr(tensor, name) for name in names]


def weight_bytes(module: nn.Module) -> int:
    """Bytes of `module`'s distinct parameters and buffers, quantized ones as they are stored."""
    seen: set[int] = set()
    total = 0
    for tensor in [*module.parameters(), *module.buffers()]:
        if id(tensor) not in seen:
            seen.add(id(tensor))
            total += tensor_bytes(tensor)
    return total


def is_quantized(tensor: torch.Tensor) -> bool:
    """A weight stored by one of the schemes (not a plain floating tensor)."""
    return _inner_tensors(tensor) is not None or hasattr(tensor, "quant_state")


def storage_pointers(tensor: torch.Tensor) -> list[int]:
    """The data pointers of the storages behind `tensor` (a quantized one has several, inside)."""
    inner = _inner_tensors(tensor)
    if inner is None:
        return [tensor.untyped_storage().data_ptr()]
    return [ptr for t in inner for ptr in storage_pointers(t)]


def compute_dtype(root: nn.Module) -> torch.dtype:
    """The dtype a span computes in: its first plain floating parameter's (norms are never quantized)."""
    for p in root.parameters():
        if p.is_floating_point() and not is_quantized(p):
            return p.dtype
    return torch.float32


def quantize_blocks(root: nn.Module, family: Family, scheme: str) -> QuantizeReport | None:
    """Quantize every `nn.Linear` in `root`'s present blocks in place (None for `none`).

    Call after loading, on a frozen span. Blocks the other side holds are placeholders without
    linear layers, so only this side's blocks change.
    """
    if scheme == "none":
        return None
    blocks = [b for b in family.blocks(root) if any(isinstance(m, nn.Linear) for m in b.modules())]
    device = next((p.device for b in blocks for p in b.parameters()), torch.device("cpu"))
    check_available(scheme, device)
    if not blocks:
        raise InvalidArgument(
            f"--quantize {scheme}: the {family.name} blocks have no nn.Linear layers to quantize "
            "(GPT-2's Conv1D layers are not supported)"
        )
    dtype = compute_dtype(root)
    before = sum(weight_bytes(b) for b in blocks)
    layers = sum(_quantize_block(b, scheme, dtype) for b in blocks)
    detach_from_checkpoint(root)
    library = f"{LIBRARIES[scheme]} {importlib.metadata.version(LIBRARIES[scheme])}"
    report = QuantizeReport(scheme, library, layers, before, sum(weight_bytes(b) for b in blocks))
    logger.info(
        "quantized %d linear layers to %s with %s: block weights %.1f MB -> %.1f MB (%.2fx)",
        layers,
        scheme,
        report.library,
        before / 1e6,
        report.bytes_after / 1e6,
        report.ratio,
    )
    return report


def detach_from_checkpoint(root: nn.Module) -> None:
    """Copy `root`'s unquantized tensors out of the checkpoint's file mapping.

    Loaded tensors are views of the safetensors file mapping, and one live view keeps the whole
    mapping, so the pages that quantizing read (every quantized layer's original weights) would
    stay resident, counted in the process's memory, for as long as an embedding or a norm
    references the file. With nothing left on the mapping it is unmapped.
    """
    with torch.no_grad():
        for tensor in [*root.parameters(), *root.buffers()]:
            if not is_quantized(tensor):
                tensor.data = tensor.data.clone()


def _quantize_block(block: nn.Module, scheme: str, dtype: torch.dtype) -> int:
    linears = [(name, m) for name, m in block.named_modules() if type(m) is nn.Linear]
    for name, module in linears:
        _replace(block, name, _int8(module) if scheme == "int8" else _nf4(module, dtype))
    return len(linears)


# Rows of an int8 weight dequantized at a time: 2**18 elements (1 MiB in float32) bound the
# temporaries of a forward or backward, where a whole-weight copy per layer is what glibc then keeps
# resident (docs/benchmarks.md, `bench quantize`).
_DEQUANTIZED_ELEMENTS = 1 << 18

# Each thread's scratch for dequantized rows, one tensor per (dtype, device), reused by every int8
# layer's forward and backward. A fresh 1 MiB block per chunk is what glibc's malloc turned into
# resident heap: after the first such block is freed it raises its mmap threshold, later blocks come
# from the heap, and their freed space stays in the process's RSS (docs/benchmarks.md). Per thread,
# because the edge runs sessions in threads and a buffer must not be written by two at once; at most
# one chunk per thread and dtype (a thread's buffers go with the thread).
_scratch = threading.local()


def _row_chunks(weight: torch.Tensor) -> list[slice]:
    rows, columns = weight.shape
    step = max(1, _DEQUANTIZED_ELEMENTS // columns)
    return [slice(start, min(start + step, rows)) for start in range(0, rows, step)]


def _scratch_rows(rows: int, columns: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """This thread's scratch as a `rows x columns` matrix of `dtype` on `device` (contents undefined)."""
    buffers: dict[tuple[torch.dtype, torch.device], torch.Tensor]
    buffers = _scratch.__dict__.setdefault("buffers", {})
    needed = rows * columns
    buffer = buffers.get((dtype, device))
    if buffer is None or buffer.numel() < needed:  # grows to the largest block this thread has run
        buffer = torch.empty(needed, dtype=dtype, device=device)
        buffers[(dtype, device)] = buffer
    return buffer[:needed].view(rows, columns)


def _dequantized_rows(weight: Any, rows: slice, dtype: torch.dtype, *, scaled: bool = True) -> torch.Tensor:
    """Rows `rows` of torchao's `Int8Tensor` as `dtype` in this thread's scratch: `qdata * scale`, as
    its `dequantize` (or `qdata` alone, not `scaled`). Valid until the thread's next call."""
    qdata = weight.qdata[rows]
    out = _scratch_rows(qdata.shape[0], qdata.shape[1], dtype, qdata.device).copy_(qdata)
    return out.mul_(weight.scale[rows].reshape(-1, 1).to(dtype)) if scaled else out


def int8_linear(x: torch.Tensor, weight: Any) -> torch.Tensor:
    """`F.linear(x, weight)` for torchao's int8 weight, a bounded block of rows at a time through this
    thread's scratch, each block's product written into its columns of the output: torchao's own
    `x @ qdata.T * scale` to float32 rounding (tests/unit/core/test_quantize.py)."""
    flat = x.reshape(-1, x.shape[-1])
    out = flat.new_empty(flat.shape[0], weight.shape[0])
    for rows in _row_chunks(weight):
        block = out[:, rows]  # strided columns, which the GEMM writes in place (no copy)
        torch.mm(flat, _dequantized_rows(weight, rows, x.dtype, scaled=False).t(), out=block)
        block.mul_(weight.scale[rows].reshape(-1).to(x.dtype))
    return out.view(*x.shape[:-1], weight.shape[0])


def int8_linear_input_grad(grad: torch.Tensor, weight: Any) -> torch.Tensor:
    """`grad @ dequantize(weight)`, accumulated over the same bounded blocks of rows in place."""
    flat = grad.reshape(-1, grad.shape[-1])
    total = flat.new_zeros(flat.shape[0], weight.shape[1])
    for rows in _row_chunks(weight):
        total.addmm_(flat[:, rows], _dequantized_rows(weight, rows, grad.dtype))
    return total.view(*grad.shape[:-1], weight.shape[1])


class _DequantizeForBackward(torch.autograd.Function):
    """`F.linear` with a frozen torchao weight, forward and backward in bounded blocks of rows.

    torchao's int8 linear multiplies by `weight.to(dtype)`, and autograd would keep that full-size
    copy until the backward: a pending forward would hold every layer's weight unquantized, more
    than an unquantized span holds. Keeping the int8 weight (the shared parameter) instead costs
    one dequantization per layer in the backward, one block of rows at a time.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.weight = weight  # the parameter itself, not a copy; frozen, so no version check needed
        out = int8_linear(x, weight)
        return out if bias is None else out + bias

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return int8_linear_input_grad(grad, ctx.weight), None, None


class Int8Linear(nn.Linear):
    """An `nn.Linear` whose frozen weight is torchao's int8 weight-only tensor (peft wraps it with
    its `TorchaoLoraLinear`; the edge's batched trunk calls it as any linear layer)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, _DequantizeForBackward.apply(x, self.weight, self.bias))


def _int8(linear: nn.Linear) -> nn.Module:
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    from splitft.model.loading import MODEL_CONSTRUCTION_LOCK

    with MODEL_CONSTRUCTION_LOCK, torch.device("meta"):
        layer = Int8Linear(linear.in_features, linear.out_features, bias=False)
    layer.weight, layer.bias = linear.weight, linear.bias
    quantize_(layer, Int8WeightOnlyConfig(), filter_fn=lambda m, _fqn: isinstance(m, Int8Linear))
    # peft's TorchaoLoraLinear warns that it cannot merge without the config; the trunk never merges.
    warnings.filterwarnings("ignore", message=".*instantiated without `get_apply_tensor_subclass`")
    return layer


def _nf4(linear: nn.Linear, dtype: torch.dtype) -> nn.Module:
    import bitsandbytes as bnb

    from splitft.model.loading import MODEL_CONSTRUCTION_LOCK

    weight = linear.weight.detach()
    with MODEL_CONSTRUCTION_LOCK, torch.device("meta"):
        layer = bnb.nn.Linear4bit(
            linear.in_features,
            linear.out_features,
            bias=False,
            compute_dtype=dtype,
            compress_statistics=True,
            quant_type="nf4",
        )
    # On CPUs with AVX512-BF16, bitsandbytes repacks the weight in place during the first
    # inference forward: the trunk's weights are shared by concurrent sessions and must not change.
    layer.support_avx512bf16_for_cpu = False
    layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, compress_statistics=True, quant_type="nf4")
    layer.bias = linear.bias
    return layer.to(weight.device)  # bitsandbytes quantizes a Params4bit when it is moved


def _replace(parent: nn.Module, dotted: str, new: nn.Module) -> None:
    *path, last = dotted.split(".")
    owner = parent.get_submodule(".".join(path)) if path else parent
    setattr(owner, last, new)
