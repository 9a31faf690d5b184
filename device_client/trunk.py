"""The edge, seen from the device: the RPC client of one open session (`RemoteTrunk`).

Forwards and backwards go out encoded with the session's codecs (parsed once, by the caller, and
handed in as a `DirectionCodecs`), on the session stream or as one call each; the optimizer,
export and selection calls are unary. `device_client.autograd` turns this client into a local
autograd operation.

Every call that changes the session's state carries a request id (`device_client.retry.RequestIds`)
and is retried after transient failures as the session's `RetryPolicy` allows, with the same id and
the same encoded bytes: the edge applies it once (`edge_server.replay`). Read-only calls are
retried too; OpenSession is not (docs/resilience.md).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
from collections.abc import Callable
from typing import Any, cast

import torch

from device_client.connection import EdgeConnection
from device_client.retry import RequestIds, RetryPolicy, call_with_retry
from device_client.stream import SessionStream
from splitft.compress import DirectionCodecs
from splitft.compress.encoder import TensorEncoder
from splitft.errors import FailedPrecondition, NotFound, Unavailable
from splitft.threads import release_idle_threads
from splitft.v1 import dataplane_pb2 as pb
from splitft.wire.codec import parts_to_tensors, tensors_to_parts
from splitft.wire.serde import hparams_to_json

logger = logging.getLogger(__name__)

CLOSE_BUDGET_S = 5.0  # CloseSession's retry budget, at most


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
        retry: RetryPolicy | None = None,
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
        self.retry = retry or RetryPolicy()
        self._jitter = self.retry.jitter()
        self._requests = RequestIds()
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
        past_length: int | None = None,
    ) -> tuple[int, torch.Tensor]:
        """Run the trunk on `hidden` (plus `extras`: attention mask, position ids); returns the
        forward's id (for its backward) and the trunk output. `on_submit` is called once the
        activations are on their way (pipelining starts the next micro-batch then). `past_length`
        (generate): against the session's trunk cache on the edge, after that many tokens."""
        with self._lock:
            forward_id = next(self._ids)
        header = pb.ForwardHeader(
            session_id=self.session_id,
            forward_id=forward_id,
            training=training,
            requires_grad=requires_grad,
            need_input_grad=need_input_grad,
            use_cache=past_length is not None,
            past_length=past_length or 0,
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
        """One forward or backward, numbered, on the session stream (opened on first use) or as one
        call; retried as the policy allows."""
        encoder = self.encoders["backward" if isinstance(header, pb.BackwardHeader) else "forward"]
        with self._requests.request() as request_id:
            header.request_id.CopyFrom(request_id)
            if not self.use_stream:
                return self._request_call(header, tensors, encoder, on_submit)
            stream = self._session_stream()
            with self._encode_lock:  # encoders keep state (error feedback, random streams)
                future = stream.submit(header, tensors, encoder)
            if on_submit is not None:
                on_submit()
            release_idle_threads()  # nothing to compute until the answer: no OpenMP workers spin
            while True:
                try:
                    return future.result(timeout=self.conn.timeout)
                except TimeoutError:
                    if not stream.retrying:
                        raise Unavailable(f"no answer from the edge within {self.conn.timeout} s") from None
                    logger.warning(
                        "no answer from the edge within %s s: opening the stream again", self.conn.timeout
                    )
                    stream.reset()

    def _request_call(
        self,
        header: pb.ForwardHeader | pb.BackwardHeader,
        tensors: dict[str, torch.Tensor],
        encoder: TensorEncoder,
        on_submit: Callable[[], None] | None,
    ) -> dict[str, torch.Tensor]:
        """A forward or backward as one call of its own (the pre-stream protocol)."""
        method, request_type = (
            ("Backward", pb.BackwardRequest)
            if isinstance(header, pb.BackwardHeader)
            else ("Forward", pb.ForwardRequest)
        )
        with self._encode_lock:  # encoded once: a retry sends the same bytes
            requests = [request_type(header=header), *tensors_to_parts(tensors, encoder, into=request_type)]
        if on_submit is not None:
            on_submit()
        release_idle_threads()
        responses = self._retrying(method, lambda: self.conn.stream(method, iter(requests)))
        return parts_to_tensors(r.part for r in responses)

    def _retrying(self, what: str, call: Callable[[], Any]) -> Any:
        """`call()`, retried after transient failures as the session's policy allows. Every call
        this client retries is numbered or changes nothing, so a deadline is transient too."""
        what = f"{what} of session {self.session_id}"
        return call_with_retry(call, self.retry, self._jitter, what=what, idempotent=True)

    def _numbered(self, method: str, make: Callable[[pb.RequestId], Any]) -> Any:
        """A unary call that changes the session: numbered, so its retries apply once."""
        with self._requests.request() as request_id:
            request = make(request_id)
            return self._retrying(method, lambda: self.conn.call(method, request))

    def _numbered_upload(self, method: str, messages: list[Any]) -> Any:
        """A request-streaming call that changes the session (its header already numbered)."""
        return self._retrying(method, lambda: self.conn.upload(method, iter(messages)))

    def _session_stream(self) -> SessionStream:
        with self._lock:
            if self.closed:
                raise FailedPrecondition("this session is closed")
            if self._stream is None:
                self._stream = SessionStream(self.conn, self.retry, self._jitter)
            return self._stream

    def configure_optimizer(self, name: str, hparams: dict[str, Any]) -> None:
        """Build the trunk adapter's optimizer `name` (one of `EDGE_OPTIMIZERS`) on the edge."""
        hparams_json = hparams_to_json(hparams)
        self._numbered(
            "ConfigureOptimizer",
            lambda rid: pb.ConfigureOptimizerRequest(
                session_id=self.session_id, name=name, hparams_json=hparams_json, request_id=rid
            ),
        )

    def mark_zero_grad(self) -> None:
        """Zeroing is lazy: the next call that touches gradients tells the edge to zero first."""
        self._zero_grad_pending = True

    def grad_norm_sq(self) -> float:
        """The squared 2-norm of the trunk adapter's gradients."""
        zero_first = self._take_zero_grad()
        response = self._numbered(
            "GradNorm",
            lambda rid: pb.GradNormRequest(
                session_id=self.session_id, zero_grad_first=zero_first, request_id=rid
            ),
        )
        return float(response.sum_of_squares)

    def step(self, hparams: dict[str, Any], grad_scale: float) -> None:
        """One trunk optimizer step with the current `hparams` and clipping's `grad_scale`."""
        hparams_json, zero_first = hparams_to_json(hparams), self._take_zero_grad()
        response = self._numbered(
            "Step",
            lambda rid: pb.StepRequest(
                session_id=self.session_id,
                hparams_json=hparams_json,
                grad_scale=grad_scale,
                zero_grad_first=zero_first,
                request_id=rid,
            ),
        )
        self.steps = int(response.steps)

    def export_adapter(self) -> dict[str, torch.Tensor]:
        """The trunk adapter's tensors, under peft's names (or a selection's sparse deltas)."""
        request = pb.ExportAdapterRequest(session_id=self.session_id)
        responses = self._retrying("ExportAdapter", lambda: self.conn.stream("ExportAdapter", request))
        self.exported_steps = max((int(r.adapter_steps) for r in responses), default=0)
        return parts_to_tensors(r.part for r in responses)

    def start_calibration(self) -> int:
        """Selection methods: the edge scores the trunk from the forwards that follow."""
        response = self._numbered(
            "StartCalibration",
            lambda rid: pb.StartCalibrationRequest(session_id=self.session_id, request_id=rid),
        )
        return int(response.target_rows)

    def select_parameters(self, k_per_row: int) -> int:
        """TaskEdge: keep `k_per_row` entries per trunk target row; returns entries selected."""
        response = self._numbered(
            "SelectParameters",
            lambda rid: pb.SelectParametersRequest(
                session_id=self.session_id, k_per_row=k_per_row, request_id=rid
            ),
        )
        self.trainable_parameters = int(response.selected)
        return int(response.selected)

    def fisher_potentials(self) -> tuple[list[pb.TrunkLayer], int, dict[str, torch.Tensor]]:
        """TinyTrain: the trunk's target layers in forward order, N, and their potentials."""
        request = pb.FisherPotentialsRequest(session_id=self.session_id)
        responses = iter(
            self._retrying("FisherPotentials", lambda: self.conn.stream("FisherPotentials", request))
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
        with self._requests.request() as rid:
            header = pb.SelectChannelsHeader(session_id=self.session_id, request_id=rid)
            requests = [
                pb.SelectChannelsRequest(header=header),
                *tensors_to_parts(channels, "raw", into=pb.SelectChannelsRequest),
            ]
            response = self._numbered_upload("SelectChannels", requests)
        self.trainable_parameters = int(response.selected)
        return int(response.selected)

    def load_adapter(self, state: dict[str, torch.Tensor]) -> int:
        """Set the trunk adapter on the edge (peft names, every key `export_adapter` gives)."""
        with self._requests.request() as rid:
            header = pb.LoadAdapterHeader(session_id=self.session_id, request_id=rid)
            requests = [
                pb.LoadAdapterRequest(header=header),
                *tensors_to_parts(state, "raw", into=pb.LoadAdapterRequest),
            ]
            return int(self._numbered_upload("LoadAdapter", requests).loaded)

    def export_state(self) -> tuple[pb.SessionState, dict[str, torch.Tensor]]:
        """The session's whole trunk state for a checkpoint (`edge_server.session_state`); it
        changes nothing, so a broken export is retried whole."""
        return cast(
            "tuple[pb.SessionState, dict[str, torch.Tensor]]",
            self._retrying("ExportSessionState", self._export_state_once),
        )

    def _export_state_once(self) -> tuple[pb.SessionState, dict[str, torch.Tensor]]:
        responses = iter(
            self.conn.stream("ExportSessionState", pb.ExportSessionStateRequest(session_id=self.session_id))
        )
        first = next(responses, None)
        if first is None or first.WhichOneof("item") != "state":
            raise Unavailable("the edge's ExportSessionState stream did not start with the state")
        return first.state, parts_to_tensors(r.part for r in responses)

    def import_state(self, state: pb.SessionState, tensors: dict[str, torch.Tensor]) -> int:
        """Continue a checkpointed session in this fresh one; returns the session's step count.
        Importing the same state again before a step sets the same state, so it is retried whole."""
        header = pb.ImportSessionStateHeader(session_id=self.session_id, state=state)
        requests = [
            pb.ImportSessionStateRequest(header=header),
            *tensors_to_parts(tensors, "raw", into=pb.ImportSessionStateRequest),
        ]
        self.steps = int(self._numbered_upload("ImportSessionState", requests).steps)
        return self.steps

    def close(self) -> None:
        """Close the session stream and the session on the edge (idempotent)."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()
        request = pb.CloseSessionRequest(session_id=self.session_id)
        # Cleanup, often of a session whose edge is gone: a short budget (the edge's TTL frees it).
        policy = dataclasses.replace(self.retry, budget_s=min(self.retry.budget_s, CLOSE_BUDGET_S))
        what = f"CloseSession of session {self.session_id}"
        try:
            call_with_retry(
                lambda: self.conn.call("CloseSession", request),
                policy,
                self._jitter,
                what=what,
                idempotent=True,
            )
        except NotFound:
            logger.info("session %s was already gone on the edge", self.session_id)

    def _take_zero_grad(self) -> bool:
        with self._lock:
            pending, self._zero_grad_pending = self._zero_grad_pending, False
        return pending
