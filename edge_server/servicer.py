"""Thin gRPC transport: messages -> tensors -> session compute -> messages.

The transport owns everything about the wire: JSON fields are parsed here (`splitft.wire.serde`),
the session's codecs and encoders are its `SessionWire` (kept by the session manager next to the
compute `TrunkSession`), and outgoing tensors are encoded here under the session's lock.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import grpc

from edge_server.auth import (
    CURRENT_CLAIMS,
    authorize_call,
    authorize_edge,
    check_not_expired,
    peer_device,
    token_session,
)
from edge_server.errors import translate_errors
from edge_server.limits import DataPlaneLimits
from edge_server.metrics import EdgeMetrics
from edge_server.selection_rpcs import SelectionRpcs
from edge_server.session import SessionOwner, TrunkSession
from edge_server.session_state import SessionStateCalls
from edge_server.session_wire import GRAD, HIDDEN
from edge_server.sessions import SessionManager
from edge_server.shared_adapters import authorize_shared_key
from edge_server.stream_requests import BACKWARD_TENSORS, FORWARD_TENSORS, StreamRequest, read_stream
from splitft.compress import DirectionCodecs, parse_codecs
from splitft.errors import InvalidArgument, SplitftError
from splitft.methods.wire import method_from_json
from splitft.model.lora import trunk_lora_from_json
from splitft.security.tokens import SplitClaims, authorize_split
from splitft.threads import release_idle_threads
from splitft.v1 import dataplane_pb2 as pb
from splitft.v1 import dataplane_pb2_grpc as pb_grpc
from splitft.wire.codec import DEFAULT_CHUNK_BYTES, TensorAssembler, tensor_parts
from splitft.wire.serde import hparams_from_json

logger = logging.getLogger(__name__)


class DataPlaneServicer(SessionStateCalls, SelectionRpcs, pb_grpc.DataPlaneServicer):
    """The edge's data-plane RPCs (see `dataplane.proto`) over a `SessionManager`; the session state
    RPCs (checkpoints) come from `SessionStateCalls`, the selection methods' four from
    `edge_server.selection_rpcs`."""

    def __init__(
        self,
        sessions: SessionManager,
        *,
        max_tensor_bytes: int,
        limits: DataPlaneLimits | None = None,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        edge_id: str = "",
        metrics: EdgeMetrics | None = None,
    ):
        self.sessions = sessions
        self.max_tensor_bytes = max_tensor_bytes
        self.limits = limits or sessions.limits
        self.chunk_bytes = chunk_bytes
        self.edge_id = edge_id
        self.metrics = metrics or EdgeMetrics(sessions.registry, sessions)

    def _session(self, session_id: str) -> TrunkSession:
        """The session a call names, if the call's token (when tokens are checked) covers it."""
        authorize_call(session_id, edge_id=self.edge_id)
        return self.sessions.get(session_id)

    @contextmanager
    def _locked(self, session_id: str) -> Iterator[TrunkSession]:
        """The session a call names (authorized as in `_session`), held under its lock."""
        session = self._session(session_id)
        with session.lock:
            yield session

    def _once(
        self, session: TrunkSession, request_id: pb.RequestId, kind: str, apply: Callable[[], Any]
    ) -> Any:
        """`apply()`'s answer, applied once per request id (`edge_server.replay`); the caller holds
        the session's lock."""
        return self.sessions.wire(session.session_id).replay.run(request_id, (kind, 0), apply)

    def _assembler(self, names: frozenset[str] | None) -> TensorAssembler:
        return TensorAssembler(
            self.max_tensor_bytes, max_total_bytes=self.limits.max_request_bytes, names=names
        )

    def _sent(self, label: str, message):
        """Count an outgoing message's bytes under its codec label, then hand it on."""
        self.metrics.sent(label, message.ByteSize())
        return message

    @translate_errors
    def ListModels(self, request, context):
        """The models this edge serves, with their block counts (the token's edge claim is checked)."""
        authorize_edge(self.edge_id)
        models = []
        for name, served in sorted(self.sessions.registry.models.items()):
            config = served.span.config
            models.append(
                pb.ModelInfo(
                    name=name,
                    family=served.span.family.name,
                    architecture=type(served.span.root).__name__,
                    num_layers=served.num_layers,
                    hidden_size=config.hidden_size,
                )
            )
        return pb.ListModelsResponse(models=models)

    @translate_errors
    def OpenSession(self, request, context):
        """Open a session: check the token's split claims and the LoRA or method config."""
        session_id = request.session_id or token_session() or None
        claims = CURRENT_CLAIMS.get()
        if claims is not None:
            authorize_call(session_id or "", model=request.model, edge_id=self.edge_id)
        codecs = parse_codecs(request.codec or "raw")  # the one parse: the typed value travels on
        if claims is not None:
            authorize_split(claims, _requested_split(request, codecs))
            if request.shared_adapter:  # a job's shared trunk adapter: only its own job's sessions
                authorize_shared_key(request.shared_adapter, claims.job)
        lora = trunk_lora_from_json(request.lora_config_json) if request.trunk_lora else None
        session = self.sessions.open(
            request.model,
            session_id=session_id,
            device_layers=request.device_layers,
            head_layers=request.head_layers,
            codecs=codecs,
            lora_config=lora,
            seed=request.seed,
            expect=(request.model_type, request.num_layers, request.hidden_size),
            method=method_from_json(request.method_json) if request.method_json else None,
            owner=SessionOwner(claims.device, claims.job)
            if claims
            else SessionOwner(peer_device(context) or ""),
            batch_size=request.batch_size,
            sequence_length=request.sequence_length,
            shared_adapter=request.shared_adapter,
        )
        self.metrics.track(session)
        return pb.OpenSessionResponse(
            session_id=session.session_id,
            trunk_start=session.spec.trunk_start,
            trunk_stop=session.spec.trunk_stop,
            trunk_trainable_parameters=session.trainable_parameters,
            ttl_seconds=int(self.sessions.ttl_seconds),
            shared_adapter=session.shared.adapter.key if session.shared is not None else "",
        )

    @translate_errors
    def CloseSession(self, request, context):
        """Close the caller's session and free its adapter, optimizer and kept graphs."""
        authorize_call(request.session_id, edge_id=self.edge_id)
        self.sessions.close(request.session_id)
        self.metrics.untrack(request.session_id)
        return pb.CloseSessionResponse()

    def _forward(
        self,
        header: pb.ForwardHeader,
        session: TrunkSession,
        tensors: dict,
        size: int,
        into: Callable[[], Any],
    ):
        """Run one forward; returns the session's wire state and the encoded trunk output as
        `into()` messages."""
        wire = self.sessions.wire(session.session_id)
        self.metrics.received(wire.label, size)

        def apply() -> list[Any]:
            out = session.forward(
                header.forward_id,
                tensors,
                training=header.training,
                requires_grad=header.requires_grad,
                need_input_grad=header.need_input_grad,
                past_length=header.past_length if header.use_cache else None,
            )
            # Encoded under the lock: the session's encoders carry state from one step to the next.
            return list(tensor_parts(HIDDEN, out, wire.encoders[HIDDEN], self.chunk_bytes, into=into))

        with session.lock, self.metrics.time_step("forward", session):
            parts = wire.replay.run(header.request_id, ("forward", header.forward_id), apply)
        return wire, _enveloped(parts, into)

    def _backward(
        self,
        header: pb.BackwardHeader,
        session: TrunkSession,
        tensors: dict,
        size: int,
        into: Callable[[], Any],
    ):
        """Run one backward; returns the session's wire state and the encoded input gradient as
        `into()` messages (none when the device did not ask for it)."""
        if set(tensors) != {"grad"}:
            raise InvalidArgument(f"backward carries exactly one tensor named 'grad', got {sorted(tensors)}")
        wire = self.sessions.wire(session.session_id)
        self.metrics.received(wire.label, size)

        def apply() -> list[Any]:
            zero_first = header.zero_grad_first
            grad = session.backward(header.forward_id, tensors["grad"], zero_grad_first=zero_first)
            if grad is None:
                return []
            return list(tensor_parts(GRAD, grad, wire.encoders[GRAD], self.chunk_bytes, into=into))

        with session.lock, self.metrics.time_step("backward", session):
            parts = wire.replay.run(header.request_id, ("backward", header.forward_id), apply)
        return wire, _enveloped(parts, into)

    @translate_errors
    def Forward(self, request_iterator, context) -> Iterator[pb.ForwardResponse]:
        """One trunk forward as a unary-response call (the `Train` stream's forward, for comparison)."""
        header, session, tensors, size = read_stream(
            request_iterator,
            pb.ForwardHeader,
            self._header_session,
            lambda _: self._assembler(FORWARD_TENSORS),
        )
        wire, messages = self._forward(header, session, tensors, size, pb.ForwardResponse)
        for message in messages:
            yield self._sent(wire.label, message)
        release_idle_threads()

    @translate_errors
    def Backward(self, request_iterator, context) -> Iterator[pb.BackwardResponse]:
        """One trunk backward as a unary-response call: returns the gradient at the trunk's input."""
        header, session, tensors, size = read_stream(
            request_iterator,
            pb.BackwardHeader,
            self._header_session,
            lambda _: self._assembler(BACKWARD_TENSORS),
        )
        wire, messages = self._backward(header, session, tensors, size, pb.BackwardResponse)
        for message in messages:
            yield self._sent(wire.label, message)
        release_idle_threads()

    @translate_errors
    def Train(self, request_iterator, context) -> Iterator[pb.TrainResponse]:
        """The session stream: requests in arrival order, one answer each (see the .proto)."""
        request: StreamRequest | None = None
        for message in request_iterator:
            item = message.WhichOneof("item")
            if item in ("forward", "backward"):
                if request is not None:
                    raise InvalidArgument("a request header arrived before the previous request's end")
                check_not_expired()  # a stream outlives no token: UNAUTHENTICATED ends it
                request = self._start_request(item, getattr(message, item))
                request.size += message.ByteSize()
            elif item == "part":
                if request is None:
                    raise InvalidArgument("a tensor part arrived outside a request")
                request.add(message)
            elif item == "end":
                if request is None:
                    raise InvalidArgument("a request end arrived outside a request")
                yield from self._answer(request)
                request = None
            else:
                raise InvalidArgument("empty TrainRequest")

    def _start_request(self, kind: str, header: Any) -> StreamRequest:
        """A Train request whose session is authorized on its header, before any part is buffered."""
        names = BACKWARD_TENSORS if kind == "backward" else FORWARD_TENSORS
        request = StreamRequest(kind, header, self._assembler(names))
        try:
            request.session = self._header_session(header)
        except SplitftError as exc:
            request.fail(exc)
        return request

    def _header_session(self, header: Any) -> TrunkSession:
        return self._session(header.session_id)

    def _answer(self, request: StreamRequest) -> Iterator[pb.TrainResponse]:
        backward = request.kind == "backward"
        reply = {"forward_id": request.header.forward_id, "backward": backward}
        try:
            tensors = request.finish()
            session = request.session
            assert session is not None  # finish() raised the authorization error otherwise
            run = self._backward if backward else self._forward
            wire, messages = run(
                request.header, session, tensors, request.size, lambda: pb.TrainResponse(**reply)
            )
        except SplitftError as exc:
            logger.info("Train: %s %d -> %s: %s", request.kind, request.header.forward_id, exc.code.name, exc)
            yield pb.TrainResponse(**reply, error=pb.StreamError(code=exc.code.name, message=exc.message))
            return
        for message in messages:
            yield self._sent(wire.label, message)
        yield pb.TrainResponse(**reply, end=pb.StreamEnd())
        release_idle_threads()  # answered: no OpenMP workers spinning while the device computes

    @translate_errors
    def ConfigureOptimizer(self, request, context):
        """Build the trunk adapter's optimizer (one of EDGE_OPTIMIZERS) with the device's settings."""
        hparams = hparams_from_json(request.hparams_json)
        with self._locked(request.session_id) as session:

            def apply() -> pb.ConfigureOptimizerResponse:
                session.configure_optimizer(request.name, hparams)
                return pb.ConfigureOptimizerResponse()

            return self._once(session, request.request_id, "configure", apply)

    @translate_errors
    def GradNorm(self, request, context):
        """The squared gradient norm of the trunk adapter, for global-norm clipping across both sides."""
        with self._locked(request.session_id) as session:

            def apply() -> pb.GradNormResponse:
                total = session.grad_norm_sq(zero_grad_first=request.zero_grad_first)
                return pb.GradNormResponse(sum_of_squares=total)

            return self._once(session, request.request_id, "grad-norm", apply)

    @translate_errors
    def Step(self, request, context):
        """One optimizer step of the trunk adapter with the device's hyper-parameters and grad scale."""
        hparams = hparams_from_json(request.hparams_json)
        with self._locked(request.session_id) as session, self.metrics.time_step("optimizer", session):

            def apply() -> pb.StepResponse:
                steps = session.step(hparams, request.grad_scale, zero_grad_first=request.zero_grad_first)
                return pb.StepResponse(steps=steps)

            return self._once(session, request.request_id, "step", apply)

    @translate_errors
    def ExportAdapter(self, request, context) -> Iterator[pb.ExportAdapterResponse]:
        """Stream the session's trunk adapter (LoRA tensors or sparse deltas) back to its device."""
        with self._locked(request.session_id) as session:
            state, steps = session.export_with_steps()
        into = functools.partial(pb.ExportAdapterResponse, adapter_steps=steps)
        for name, tensor in state.items():
            for message in tensor_parts(name, tensor, "raw", self.chunk_bytes, into=into):
                yield self._sent("raw", message)

    @translate_errors
    def LoadAdapter(self, request_iterator, context):
        """Set a LoRA session's trunk adapter before it trains (a federated round, a checkpoint)."""
        header, session, state, size = read_stream(
            request_iterator, pb.LoadAdapterHeader, self._header_session, lambda _: self._assembler(None)
        )
        self.metrics.received("raw", size)
        with session.lock:

            def apply() -> pb.LoadAdapterResponse:
                return pb.LoadAdapterResponse(loaded=session.load_adapter(state))

            return self._once(session, header.request_id, "load-adapter", apply)


def _enveloped(stored: list[Any], into: Callable[[], Any]) -> list[Any]:
    """A forward's or backward's answer as `into()` messages. It was stored as the messages of the
    call that applied it; a replay on another kind of call (Train, Forward) copies the parts over."""
    if not stored or type(stored[0]) is type(into()):
        return stored  # the same request on the same kind of call: the same messages
    messages = []
    for message in stored:
        envelope = into()
        envelope.part.CopyFrom(message.part)
        messages.append(envelope)
    return messages


def _requested_split(request: pb.OpenSessionRequest, codecs: DirectionCodecs) -> SplitClaims:
    """What an OpenSession asks for, in the token's terms (codec canonical, as the control plane
    stores it)."""
    return SplitClaims(
        device_layers=request.device_layers,
        head_layers=request.head_layers,
        trunk_lora=request.trunk_lora,
        codec=str(codecs),
    )


def add_to_server(servicer: DataPlaneServicer, server: grpc.Server) -> None:
    """Register the data-plane servicer on a gRPC server."""
    pb_grpc.add_DataPlaneServicer_to_server(servicer, server)
