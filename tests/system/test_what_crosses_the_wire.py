"""Every message of a real split run, inspected: only activations, masks, gradients and trunk adapters cross.

A client interceptor records each request (each item of request streams too) and each response of
a real training run: steps with gradient clipping, an eval no-grad forward and `save_adapter`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
import torch
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from device_client import EdgeConnection, SplitModel
from edge_server import EdgeServer
from splitft.model.families import FAMILIES
from splitft.privacy.wire_tap import tensor_parts
from splitft.testing.tiny import TinyModel, lora_config_for, make_batch
from splitft.v1 import dataplane_pb2 as pb
from splitft.wire.codec import parts_to_tensors

FAMILIES_UNDER_TEST = ("bert", "llama", "vit")  # sequence classification, causal LM, pixels
DEVICE_LAYERS, HEAD_LAYERS, NUM_LAYERS = 1, 1, 4
TRUNK_BLOCKS = range(DEVICE_LAYERS, NUM_LAYERS - HEAD_LAYERS)
ACTIVATION_NAMES = {"hidden", "attention_mask", "position_ids", "grad"}
MIN_SEARCHED_RUN = 8  # shorter secrets (4 class labels) are only checked for equality, not searched for


@dataclass
class RecordedCall:
    method: str
    requests: list[Message] = field(default_factory=list)
    responses: list[Message] = field(default_factory=list)


class Recorder(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Records every message as it is actually sent or received, for all four call shapes."""

    def __init__(self) -> None:
        self.calls: list[RecordedCall] = []

    def _start(self, details: grpc.ClientCallDetails) -> RecordedCall:
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        call = RecordedCall(method.rsplit("/", 1)[-1])
        self.calls.append(call)
        return call

    @staticmethod
    def _tap(items: Iterator[Message], sink: list[Message]) -> Iterator[Message]:
        for item in items:
            sink.append(item)
            yield item

    def _unary_response(self, outcome: Any, call: RecordedCall) -> Any:
        if outcome.exception() is None:
            call.responses.append(outcome.result())
        return outcome

    def intercept_unary_unary(
        self, continuation: Callable, details: grpc.ClientCallDetails, request: Message
    ) -> Any:
        call = self._start(details)
        call.requests.append(request)
        return self._unary_response(continuation(details, request), call)

    def intercept_unary_stream(
        self, continuation: Callable, details: grpc.ClientCallDetails, request: Message
    ) -> Any:
        call = self._start(details)
        call.requests.append(request)
        return self._tap(continuation(details, request), call.responses)

    def intercept_stream_unary(
        self, continuation: Callable, details: grpc.ClientCallDetails, request_iterator: Iterator[Message]
    ) -> Any:
        call = self._start(details)
        return self._unary_response(continuation(details, self._tap(request_iterator, call.requests)), call)

    def intercept_stream_stream(
        self, continuation: Callable, details: grpc.ClientCallDetails, request_iterator: Iterator[Message]
    ) -> Any:
        call = self._start(details)
        return self._tap(continuation(details, self._tap(request_iterator, call.requests)), call.responses)


@dataclass
class Run:
    family: str
    tiny: TinyModel
    calls: list[RecordedCall]
    secrets: dict[str, torch.Tensor]  # every raw input and label the device used


@pytest.fixture(scope="module", params=FAMILIES_UNDER_TEST)
def run(
    request: pytest.FixtureRequest,
    tiny_models: dict[str, TinyModel],
    edge: EdgeServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Run:
    family: str = request.param
    tiny = tiny_models[family]
    recorder = Recorder()
    generator = torch.Generator().manual_seed(0)
    batches = [make_batch(family, generator) for _ in range(3)]
    torch.manual_seed(0)
    with EdgeConnection(edge.address, insecure=True, interceptors=[recorder]) as conn:
        model = SplitModel.from_pretrained(
            tiny.path,
            edge=conn,
            model=family,
            device_layers=DEVICE_LAYERS,
            head_layers=HEAD_LAYERS,
            lora_config=lora_config_for(family),
        )
        optimizer = model.configure_optimizer(torch.optim.AdamW, lr=1e-2)
        model.train()
        for batch in batches[:2]:
            model(**batch).loss.backward()
            optimizer.clip_grad_norm_(0.1)  # small enough to be active
            optimizer.step()
            optimizer.zero_grad()
        model.eval()
        with torch.no_grad():
            model(**batches[2])
        model.save_adapter(tmp_path_factory.mktemp(f"wire-{family}"))
        model.close()
    secrets = {
        f"{name}[{i}]": tensor
        for i, batch in enumerate(batches)
        for name, tensor in batch.items()
        if name != "attention_mask"
    }
    return Run(family, tiny, recorder.calls, secrets)


def _requests_of(messages: list[Message]) -> Iterator[list[Message]]:
    """A Train stream's messages cut at each `end`: one list per request (or answer)."""
    current: list[Message] = []
    for message in messages:
        current.append(message)
        if message.WhichOneof("item") in ("end", "error"):
            yield current
            current = []
    assert not current, "a Train stream ended in the middle of a request"


def _tensor_streams(call: RecordedCall) -> Iterator[dict[str, torch.Tensor]]:
    """The decoded tensors of each request and each answer of one call."""
    for messages in (call.requests, call.responses):
        groups = _requests_of(messages) if call.method == "Train" else [messages]
        for group in groups:
            parts = [part for message in group for part in tensor_parts(message)]
            if parts:
                yield parts_to_tensors(parts)


def _all_tensors(run: Run) -> list[tuple[str, str, torch.Tensor]]:
    return [
        (call.method, name, tensor)
        for call in run.calls
        for stream in _tensor_streams(call)
        for name, tensor in stream.items()
    ]


def _contains(haystack: torch.Tensor, needle: torch.Tensor) -> bool:
    """Whether `needle` equals `haystack`, or one of its rows appears as a contiguous run of it."""
    flat = haystack.detach().reshape(-1).to(torch.float64)
    secret = needle.reshape(-1).to(torch.float64)
    if flat.numel() == secret.numel() and torch.equal(flat, secret):
        return True
    rows = needle.reshape(-1, needle.shape[-1]).to(torch.float64) if needle.dim() else secret[None]
    if rows.shape[1] < MIN_SEARCHED_RUN or flat.numel() < rows.shape[1]:
        return False
    windows = flat.unfold(0, rows.shape[1], 1)  # every contiguous run of a row's length
    return bool((windows[None, :, :] == rows[:, None, :]).all(dim=-1).any())


def test_only_known_methods_and_session_control(run: Run) -> None:
    methods = {call.method for call in run.calls}
    assert methods <= {
        "OpenSession",
        "ConfigureOptimizer",
        "Train",
        "GradNorm",
        "Step",
        "ExportAdapter",
        "CloseSession",
    }
    assert {"Train", "GradNorm", "Step", "ExportAdapter"} <= methods  # the run used them all
    assert [call.method for call in run.calls].count("Train") == 1  # one stream for the whole session


def test_raw_bytes_travel_only_inside_tensors(run: Run) -> None:
    def check(message: Message) -> None:
        for descriptor, value in message.ListFields():
            if descriptor.type == FieldDescriptor.TYPE_BYTES:
                assert isinstance(message, (pb.Tensor, pb.TensorChunk)), f"bytes in {type(message).__name__}"
            if descriptor.type == FieldDescriptor.TYPE_MESSAGE:
                for item in value if descriptor.is_repeated else [value]:
                    check(item)

    for call in run.calls:
        for message in call.requests + call.responses:
            check(message)


def test_tensor_names_are_activations_or_adapters(run: Run) -> None:
    tensors = _all_tensors(run)
    assert tensors
    for method, name, _ in tensors:
        assert name in ACTIVATION_NAMES or "lora_" in name, f"{method} carried tensor {name!r}"


def test_no_input_or_label_crosses(run: Run) -> None:
    assert any(k.startswith("labels") for k in run.secrets)
    assert any(k.startswith("input_ids" if run.family != "vit" else "pixel_values") for k in run.secrets)
    for method, name, tensor in _all_tensors(run):
        for secret_name, secret in run.secrets.items():
            assert not _contains(tensor, secret), f"{method} tensor {name!r} carries {secret_name}"


def test_no_frozen_weight_crosses(run: Run) -> None:
    full = run.tiny.model_class.from_pretrained(run.tiny.path)
    weights = dict(full.named_parameters())
    assert any("embed" in n for n in weights) and len(weights) > 10
    for method, name, tensor in _all_tensors(run):
        for weight_name, weight in weights.items():
            if weight.shape == tensor.shape:
                leak = torch.equal(weight.detach(), tensor)
                assert not leak, f"{method} tensor {name!r} equals {weight_name}"


def test_export_carries_only_trunk_lora(run: Run) -> None:
    blocks_path = next(f for f in FAMILIES if f.name == run.family).blocks_path
    block_of = re.compile(rf"(?:^|\.){re.escape(blocks_path)}\.(\d+)\.")
    exported = {
        name
        for call in run.calls
        if call.method == "ExportAdapter"
        for stream in _tensor_streams(call)
        for name in stream
    }
    assert exported
    for name in exported:
        match = block_of.search(name)
        assert "lora_" in name and match is not None, name
        assert int(match.group(1)) in TRUNK_BLOCKS, f"{name} is not a trunk block's adapter"
