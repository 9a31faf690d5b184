"""The edge, seen from the device: the RPC client of one open session (`RemoteTrunk`).

Forwards and backwards go out encoded with the session's codecs (parsed once, by the caller, and
handed in as a `DirectionCodecs`), on the session stream or as one call each; the optimizer,
export and selection calls are unary. `device_client.autograd` turns this client into a local
autograd operation.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch

from device_client.connection import EdgeConnection
from device_client.stream import SessionStream
from splitft.compress import DirectionCodecs
from splitft.compress.encoder import TensorEncoder
from splitft.errors import FailedPrecondition, NotFound, Unavailable
from splitft.threads import release_idle_threads
from splitft.v1 import dataplane_pb2 as pb
from splitft.wire.codec import parts_to_tensors, tensors_to_parts
from splitft.wire.serde import hparams_to_json

logger = logging.getLogger(__name__)


class RemoteTrunk:
    """One open session on an edge: forward, backward, optimizer and export calls."""

    def __init__(
        self,
        conn: EdgeConnection,
        opened: pb.OpenSessionResponse,
        codecs: DirectionCodecs,
        *,
        seed: int = 0,
        use_stream: bool = True,
    ) -> None:
        self.conn = conn
        self.session_id = opened.session_id
        self.trainable_parameters = opened.trunk_trainable_parameters
        self.codecs = codecs  # as sent in OpenSession
        # What the device sends: activations forward, gradients backward, each with its own state
        # (error feedback, warm-started bases, stochastic rounding) for the life of the session.
        self.encoders = {
            "forward": TensorEncoder(codecs.activations, seed=seed ^ 0xD3A),
            "backward": TensorEncoder(codecs.gradients, seed=seed ^ 0xD36),
        }
        self.steps = 0
        self.shared_adapter = opened.shared_adapter  # the shared trunk adapter it joined ("": its own)
        self.exported_steps = 0  # the adapter's steps at the last export (a shared one: all sessions')
        self.forwards = 0
        self.closed = False
        self._ids = itertools.count(1)
        self._zero_grad_pending = False
        # Forwards and backwards travel on one stream per session; False: one call each (the
        # pre-stream protocol, kept for comparison in `splitft bench step`).
        self.use_stream = use_stream
        self._stream: SessionStream | None = None
        self._lock = threading.Lock()  # micro-batch threads share this trunk
        self._encode_lock = threading.Lock()

    @property
    def trainable(self) -> bool:
        """Whether the trunk has parameters to train on the edge."""
        return self.trainable_parameters > 0

    def forward(
        self,
        hidden: torch.Tensor,
        extras: dict[str, torch.Tensor],
        *,
        training: bool,
        requires_grad: bool,
        need_input_grad: bool,
        on_submit: Callable[[], None] | None = None,
    ) -> tuple[int, torch.Tensor]:
        """Run the trunk on `hidden` (plus `extras`: attention mask, position ids); returns the
        forward's id (for its backward) and the trunk output. `on_submit` is called once the
        activations are on their way (pipelining starts the next micro-batch then)."""
        with self._lock:
            forward_id = next(self._ids)
        header = pb.ForwardHeader(
            session_id=self.session_id,
            forward_id=forward_id,
            training=training,
            requires_grad=requires_grad,
            need_input_grad=need_input_grad,
        )
        answer = self._request(header, {"hidden": hidden, **extras}, on_submit)
        out = answer.get("hidden")
        if out is None:
            raise Unavailable("the edge answered a forward without its 'hidden' output")
        with self._lock:
            self.forwards += 1
        return forward_id, out.to(device=hidden.device, dtype=hidden.dtype)  # cast on arrival

    def backward(self, forward_id: int, grad: torch.Tensor) -> torch.Tensor | None:
        """Back-propagate `grad` through forward `forward_id` on the edge; returns the input
        gradient when that forward asked for it."""
        header = pb.BackwardHeader(
            session_id=self.session_id, forward_id=forward_id, zero_grad_first=self._take_zero_grad()
        )
        return self._request(header, {"grad": grad.contiguous()}).get("grad")

    def _request(
        self,
        header: pb.ForwardHeader | pb.BackwardHeader,
        tensors: dict[str, torch.Tensor],
        on_submit: Callable[[], None] | None = None,
    ) -> dict[str, torch.Tensor]:
        """One forward or backward on the session stream (opened on first use), or as one call."""
        encoder = self.encoders["backward" if isinstance(header, pb.BackwardHeader) else "forward"]
        if not self.use_stream:
            method, request_type, response_field = (
                ("Backward", pb.BackwardRequest, "part")
                if isinstance(header, pb.BackwardHeader)
                else ("Forward", pb.ForwardRequest, "part")
            )
            requests = itertools.chain(
                [request_type(header=header)],
                tensors_to_parts(tensors, encoder, into=request_type),
            )
            if on_submit is not None:
                on_submit()
            release_idle_threads()
            responses = self.conn.stream(method, requests)
            return parts_to_tensors(getattr(r, response_field) for r in responses)
        stream = self._session_stream()
        with self._encode_lock:  # encoders keep state (error feedback, random streams)
            future = stream.submit(header, tensors, encoder)
        if on_submit is not None:
            on_submit()
        release_idle_threads()  # nothing to compute until the answer: no OpenMP workers spinning meanwhile
        try:
            return future.result(timeout=self.conn.timeout)
        except TimeoutError:
            raise Unavailable(f"no answer from the edge within {self.conn.timeout} s") from None

    def _session_stream(self) -> SessionStream:
        with self._lock:
            if self.closed:
                raise FailedPrecondition("this session is closed")
            if self._stream is None:
                self._stream = SessionStream(self.conn)
            return self._stream

    def configure_optimizer(self, name: str, hparams: dict[str, Any]) -> None:
        """Build the trunk adapter's optimizer `name` (one of `EDGE_OPTIMIZERS`) on the edge."""
        self.conn.call(
            "ConfigureOptimizer",
            pb.ConfigureOptimizerRequest(
                session_id=self.session_id, name=name, hparams_json=hparams_to_json(hparams)
            ),
        )

    def mark_zero_grad(self) -> None:
        """Zeroing is lazy: the next call that touches gradients tells the edge to zero first."""
        self._zero_grad_pending = True

    def grad_norm_sq(self) -> float:
        """The squared 2-norm of the trunk adapter's gradients."""
        response = self.conn.call(
            "GradNorm", pb.GradNormRequest(session_id=self.session_id, zero_grad_first=self._take_zero_grad())
        )
        return float(response.sum_of_squares)

    def step(self, hparams: dict[str, Any], grad_scale: float) -> None:
        """One trunk optimizer step with the current `hparams` and clipping's `grad_scale`."""
        response = self.conn.call(
            "Step",
            pb.StepRequest(
                session_id=self.session_id,
                hparams_json=hparams_to_json(hparams),
                grad_scale=grad_scale,
                zero_grad_first=self._take_zero_grad(),
            ),
        )
        self.steps = int(response.steps)

    def export_adapter(self) -> dict[str, torch.Tensor]:
        """The trunk adapter's tensors, under peft's names (or a selection's sparse deltas)."""
        responses = self.conn.stream("ExportAdapter", pb.ExportAdapterRequest(session_id=self.session_id))
        steps = [0]

        def parts() -> Iterator[pb.TensorPart]:
            for response in responses:
                steps[0] = max(steps[0], int(response.adapter_steps))
                yield response.part

        state = parts_to_tensors(parts())
        self.exported_steps = steps[0]
        return state

    def start_calibration(self) -> int:
        """Selection methods: the edge scores the trunk from the forwards that follow."""
        response = self.conn.call("StartCalibration", pb.StartCalibrationRequest(session_id=self.session_id))
        return int(response.target_rows)

    def select_parameters(self, k_per_row: int) -> int:
        """TaskEdge: keep `k_per_row` entries per trunk target row; returns entries selected."""
        response = self.conn.call(
            "SelectParameters", pb.SelectParametersRequest(session_id=self.session_id, k_per_row=k_per_row)
        )
        self.trainable_parameters = int(response.selected)
        return int(response.selected)

    def fisher_potentials(self) -> tuple[list[pb.TrunkLayer], int, dict[str, torch.Tensor]]:
        """TinyTrain: the trunk's target layers in forward order, N, and their potentials."""
        responses = iter(
            self.conn.stream("FisherPotentials", pb.FisherPotentialsRequest(session_id=self.session_id))
        )
        first = next(responses, None)
        if first is None or first.WhichOneof("item") != "summary":
            raise Unavailable("the edge's FisherPotentials stream did not start with a summary")
        potentials = parts_to_tensors(r.part for r in responses)
        layers = list(first.summary.layers)
        if set(potentials) != {layer.name for layer in layers}:
            raise Unavailable("the edge sent potentials for other layers than it listed")
        return layers, int(first.summary.samples), potentials

    def select_channels(self, channels: dict[str, torch.Tensor]) -> int:
        """TinyTrain: train these output rows of these trunk layers; returns trunk entries selected."""
        requests = itertools.chain(
            [pb.SelectChannelsRequest(header=pb.SelectChannelsHeader(session_id=self.session_id))],
            tensors_to_parts(channels, "raw", into=pb.SelectChannelsRequest),
        )
        response = self.conn.upload("SelectChannels", requests)
        self.trainable_parameters = int(response.selected)
        return int(response.selected)

    def load_adapter(self, state: dict[str, torch.Tensor]) -> int:
        """Set the trunk adapter on the edge (peft names, every key `export_adapter` gives)."""
        requests = itertools.chain(
            [pb.LoadAdapterRequest(header=pb.LoadAdapterHeader(session_id=self.session_id))],
            tensors_to_parts(state, "raw", into=pb.LoadAdapterRequest),
        )
        return int(self.conn.upload("LoadAdapter", requests).loaded)

    def close(self) -> None:
        """Close the session stream and the session on the edge (idempotent)."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()
        try:
            self.conn.call("CloseSession", pb.CloseSessionRequest(session_id=self.session_id))
        except NotFound:
            logger.info("session %s was already gone on the edge", self.session_id)

    def _take_zero_grad(self) -> bool:
        with self._lock:
            pending, self._zero_grad_pending = self._zero_grad_pending, False
        return pending
