"""A session's whole trunk state, out and in: what a checkpoint needs from the edge (issue 17).

`export_session_state` gives what a session carries that changes training: the trunk adapter, its
optimizer's state and hyper-parameters, the step count, the session's dropout generator and the
state of its wire encoders (error feedback, warm starts, random streams). `import_session_state`
puts that into a freshly opened session of the same model, split, codec and LoRA config, on this
edge or another, so that training continues exactly where it stopped. Kept graphs and gradients
are not state: a checkpoint is taken between optimizer steps.

Everything is checked before anything changes (adapter keys and shapes, optimizer state against
its parameters, generator states by loading them into scratch generators, encoder state into
scratch encoders), so a refused import leaves the session as it was, and bad input is a precise
gRPC status, never a dead edge. Selection-method sessions (TaskEdge, TinyTrain) are refused: their
chosen entries and scorer state are not exportable.

`SessionStateCalls` is the transport half, mixed into `DataPlaneServicer`.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, cast

import torch
from peft import LoraConfig

from edge_server.errors import translate_errors
from edge_server.session import TrunkSession
from edge_server.session_wire import SessionWire
from edge_server.stream_requests import read_stream
from edge_server.trunk_optim import OPTIMIZERS
from splitft.compress.encoder import TensorEncoder, generator_state
from splitft.errors import FailedPrecondition, InvalidArgument
from splitft.model.adapter_state import check_adapter_state, load_adapter_state
from splitft.model.lora import trunk_lora_json
from splitft.v1 import dataplane_pb2 as pb
from splitft.wire.codec import tensor_parts
from splitft.wire.serde import optimizer_groups_from_json, optimizer_groups_to_json

if TYPE_CHECKING:
    from edge_server.servicer import DataPlaneServicer

FORMAT = 1
SESSION_GENERATOR = "session"
_OPTIM_NAME = re.compile(r"optim/(\d{1,9})/([A-Za-z_][A-Za-z0-9_]{0,63})")


def _refuse_selection(session: TrunkSession, what: str) -> None:
    if session.shared is not None:
        raise FailedPrecondition(
            f"cannot {what} a session on a shared trunk adapter: the adapter is its job's, stepped by "
            "other sessions too (docs/federated.md)"
        )
    if session.selection is not None:
        raise FailedPrecondition(
            f"cannot {what} a selection-method session: its selected entries and scorer state are not "
            "exportable; checkpoints cover LoRA sessions (or sessions without a trunk adapter)"
        )


def _fingerprint(session: TrunkSession, wire: SessionWire) -> dict[str, Any]:
    """What a state must match to fit a session (the SessionState fields of the same names)."""
    config = session.span.config
    lora = ""
    if session.peft_model is not None:
        lora = trunk_lora_json(cast(LoraConfig, session.peft_model.peft_config["default"]))
    return {
        "model_type": str(config.model_type),
        "num_layers": session.spec.num_layers,
        "hidden_size": int(config.hidden_size),
        "trunk_start": session.spec.trunk_start,
        "trunk_stop": session.spec.trunk_stop,
        "codec": str(wire.codecs),
        "lora_config_json": lora,
    }


def export_session_state(session: TrunkSession, wire: SessionWire) -> tuple[pb.SessionState, dict]:
    """The session's state header and its tensors (on the CPU); the caller holds the session's lock."""
    _refuse_selection(session, "checkpoint")
    if session.pending_forwards:
        raise FailedPrecondition(
            f"session keeps {session.pending_forwards} forward(s) awaiting their backward; a checkpoint "
            "is taken between optimizer steps"
        )
    state = pb.SessionState(format=FORMAT, steps=session.steps, **_fingerprint(session, wire))
    tensors = {f"adapter/{k}": v.to("cpu") for k, v in session.export_adapter().items()}
    optimizer = session.optim.optimizer
    if optimizer is not None:
        saved = optimizer.state_dict()
        state.optimizer = type(optimizer).__name__
        state.optimizer_groups_json = optimizer_groups_to_json(saved["param_groups"])
        for index, entries in saved["state"].items():
            for name, value in entries.items():
                if isinstance(value, torch.Tensor):  # None (an unused momentum buffer) is no state
                    tensors[f"optim/{index}/{name}"] = value.detach().to("cpu", copy=True)
    state.generators[SESSION_GENERATOR] = bytes(session.rng.get_state().numpy().tobytes())
    for direction, encoder in wire.encoders.items():
        generator, encoder_tensors = encoder.state()
        state.generators[f"wire/{direction}"] = generator
        tensors.update({f"wire/{direction}/{k}": v for k, v in encoder_tensors.items()})
    return state, tensors


def import_session_state(
    session: TrunkSession, wire: SessionWire, state: pb.SessionState, tensors: dict[str, torch.Tensor]
) -> int:
    """Make a fresh session continue from `state` and `tensors` (as `export_session_state` gave them);
    returns how many tensors were imported. The caller holds the session's lock."""
    _refuse_selection(session, "import a checkpoint into")
    if session.steps or session.pending_forwards:
        raise FailedPrecondition("a session state is imported before the session's first forward and step")
    _check_fits(session, wire, state)
    groups: dict[str, dict[str, torch.Tensor]] = {"adapter": {}, "optim": {}, "wire": {}}
    for name, tensor in tensors.items():
        kind, _, rest = name.partition("/")
        if kind not in groups or not rest:
            raise InvalidArgument(f"unknown session state tensor {name!r} (adapter/, optim/ or wire/)")
        groups[kind][rest if kind == "adapter" else name] = tensor
    _check_adapter(session, groups["adapter"])
    optimizer = _restored_optimizer(session, state, groups["optim"])
    encoders = _restored_encoders(wire, state, groups["wire"], _max_wire_entries(session))
    session_rng = _generator(state, SESSION_GENERATOR)
    if optimizer is not None:  # its state per parameter must fit this edge's memory first
        session.memory.settle(session.trainable, state.optimizer, optimizer.param_groups[0])
    # Checked: from here on nothing can be refused.
    if session.peft_model is not None:
        load_adapter_state(session.peft_model, groups["adapter"], what="session's trunk adapter")
    if optimizer is not None:
        session.optim.optimizer = optimizer
    session.optim.steps = state.steps
    if session_rng is not None:
        session.rng.set_state(session_rng)
    wire.encoders.update(encoders)
    return len(tensors)


def _check_fits(session: TrunkSession, wire: SessionWire, state: pb.SessionState) -> None:
    if state.format != FORMAT:
        raise InvalidArgument(f"session state format {state.format} is not {FORMAT}, the one this edge reads")
    for field, mine in _fingerprint(session, wire).items():
        theirs = getattr(state, field)
        if theirs != mine:
            raise FailedPrecondition(
                f"the session state does not fit this session: {field} is {theirs!r} in the state, "
                f"{mine!r} here (open the session as the checkpointed one was opened)"
            )
    if state.steps >= 1 << 62:
        raise InvalidArgument(f"session state steps {state.steps} is out of range")
    known = {SESSION_GENERATOR, *(f"wire/{d}" for d in wire.encoders)}
    unknown = sorted(set(state.generators) - known)
    if unknown:
        raise InvalidArgument(
            f"unknown generators {unknown[:3]} in the session state; known: {sorted(known)}"
        )


def _check_adapter(session: TrunkSession, adapter: dict[str, torch.Tensor]) -> None:
    if session.peft_model is None:
        if adapter:
            raise InvalidArgument("the state has a trunk adapter but this session trains none")
        return
    check_adapter_state(adapter, session.export_adapter(), what="session's trunk adapter")


def _generator(state: pb.SessionState, name: str) -> torch.Tensor | None:
    """The named generator's state, checked; None when the state leaves it out (the fresh one stays)."""
    if name not in state.generators:
        return None
    return generator_state(state.generators[name], f"generator {name!r}")


def _restored_optimizer(
    session: TrunkSession, state: pb.SessionState, tensors: dict[str, torch.Tensor]
) -> torch.optim.Optimizer | None:
    """A new optimizer over the session's parameters holding the exported state (not yet installed)."""
    if not state.optimizer:
        if tensors or state.optimizer_groups_json:
            raise InvalidArgument("optimizer state without an optimizer name")
        return None
    if state.optimizer not in OPTIMIZERS:
        raise InvalidArgument(
            f"optimizer {state.optimizer!r} is not supported; supported: {list(OPTIMIZERS)}"
        )
    params = session.trainable
    if not params:
        raise InvalidArgument("the state has an optimizer but this session trains no trunk parameters")
    groups = [
        {k: tuple(v) if isinstance(v, list) else v for k, v in g.items()}  # torch keeps tuples (betas)
        for g in optimizer_groups_from_json(state.optimizer_groups_json)
    ]
    if len(groups) != 1:
        raise InvalidArgument(f"the trunk optimizer has one param group, the state has {len(groups)}")
    entries: dict[int, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        match = _OPTIM_NAME.fullmatch(name)
        index = int(match.group(1)) if match else -1
        if not 0 <= index < len(params):
            raise InvalidArgument(
                f"optimizer state {name!r} names no trainable parameter (0..{len(params) - 1})"
            )
        if tensor.shape != params[index].shape and tensor.dim() != 0:
            raise InvalidArgument(
                f"optimizer state {name!r} has shape {list(tensor.shape)}, its parameter "
                f"{list(params[index].shape)}"
            )
        if not (tensor.dtype.is_floating_point and bool(torch.isfinite(tensor).all())):
            raise InvalidArgument(f"optimizer state {name!r} must be finite floating-point values")
        assert match is not None
        entries.setdefault(index, {})[match.group(2)] = tensor
    try:
        cls: Callable[..., torch.optim.Optimizer] = OPTIMIZERS[state.optimizer]
        # Built with what its constructor takes; load_state_dict then sets every saved group entry.
        accepted = inspect.signature(cls.__init__).parameters
        optimizer = cls(params, **{k: v for k, v in groups[0].items() if k in accepted and k != "params"})
        optimizer.load_state_dict(
            {"state": entries, "param_groups": [{**groups[0], "params": list(range(len(params)))}]}
        )
    except (TypeError, ValueError, KeyError, IndexError, RuntimeError) as exc:
        raise InvalidArgument(f"the optimizer state does not load into {state.optimizer}: {exc}") from exc
    return optimizer


def _max_wire_entries(session: TrunkSession) -> int:
    """The most entries an encoder's residual or basis can have: one forward's largest output."""
    return session.limits.max_batch_tokens * int(session.span.config.hidden_size)


def _restored_encoders(
    wire: SessionWire, state: pb.SessionState, tensors: dict[str, torch.Tensor], max_entries: int
) -> dict[str, TensorEncoder]:
    """Scratch encoders per direction holding the exported state (not yet installed). An edge
    encoder only ever keeps state for the one tensor its direction sends (named as the direction),
    no bigger than one forward's output: nothing else may be parked in a session's memory."""
    by_direction: dict[str, dict[str, torch.Tensor]] = {d: {} for d in wire.encoders}
    for name, tensor in tensors.items():
        _, direction, rest = name.split("/", 2) if name.count("/") >= 2 else ("", "", "")
        if direction not in by_direction:
            raise InvalidArgument(
                f"wire state {name!r} names no direction of this edge {sorted(by_direction)}"
            )
        if rest.partition("/")[2] != direction or tensor.numel() > max_entries:
            raise InvalidArgument(
                f"wire state {name!r} ({tensor.numel()} entries) is not state this edge's "
                f"{direction!r} encoder keeps"
            )
        by_direction[direction][rest] = tensor
    restored = {}
    for direction, encoder in wire.encoders.items():
        fresh = TensorEncoder(encoder.spec, seed=encoder.seed)
        name = f"wire/{direction}"
        generator = state.generators[name] if name in state.generators else encoder.state()[0]
        fresh.load_state(generator, by_direction[direction])
        restored[direction] = fresh
    return restored


class SessionStateCalls:
    """The ExportSessionState and ImportSessionState RPCs, mixed into `DataPlaneServicer`."""

    @translate_errors
    def ExportSessionState(self, request, context) -> Iterator[pb.ExportSessionStateResponse]:
        """Stream a session's state (for a checkpoint): the header, then its tensors, raw."""
        servicer = cast("DataPlaneServicer", self)
        with servicer._locked(request.session_id) as session:
            state, tensors = export_session_state(session, servicer.sessions.wire(request.session_id))
        yield servicer._sent("raw", pb.ExportSessionStateResponse(state=state))
        for name, tensor in tensors.items():
            for message in tensor_parts(
                name, tensor, "raw", servicer.chunk_bytes, into=pb.ExportSessionStateResponse
            ):
                yield servicer._sent("raw", message)

    @translate_errors
    def ImportSessionState(self, request_iterator, context) -> pb.ImportSessionStateResponse:
        """Continue a checkpointed session in this fresh one (bounded like any request)."""
        servicer = cast("DataPlaneServicer", self)
        header, session, tensors, size = read_stream(
            request_iterator,
            pb.ImportSessionStateHeader,
            servicer._header_session,
            lambda _: servicer._assembler(None),
        )
        servicer.metrics.received("raw", size)
        with session.lock:
            count = import_session_state(
                session, servicer.sessions.wire(session.session_id), header.state, tensors
            )
            steps = session.steps
        return pb.ImportSessionStateResponse(steps=steps, tensors=count)
