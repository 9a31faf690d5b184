"""Bad input on the session-state RPCs (checkpoints) gets a precise status and never hurts the edge.

The edge runs as a process (`splitft edge serve`, mutual TLS, session tokens, a 1 MiB request
bound). A real exported state is altered one field or tensor at a time and imported into a fresh
session: every alteration is refused with its own status and message, the session is left exactly
as it was (the unaltered state then imports and trains), other devices cannot export or import a
session that is not theirs, and the edge keeps serving a bystander throughout.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator

import pytest
import torch

from device_client import SplitModel
from splitft.errors import (
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
    SplitftError,
)
from splitft.local.launch import EdgeProcess
from splitft.testing.tiny import TinyModel, lora_config_for, make_batch
from splitft.v1 import dataplane_pb2 as pb
from splitft.wire.codec import tensors_to_parts
from tests.support.adversarial_edge import FAMILY, Deployment, assert_edge_serves

REQUEST_LIMIT = 1 << 20
State = tuple[pb.SessionState, dict[str, torch.Tensor]]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    return Deployment.create(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def edge(
    deployment: Deployment, tiny_models: dict[str, TinyModel], tmp_path_factory
) -> Iterator[EdgeProcess]:
    paths = deployment.paths
    tls = (str(paths.directory), str(paths.device_cert("healthcheck")), str(paths.device_key("healthcheck")))
    args = ["--token-issuer-key", str(deployment.issuer_pub), "--max-request-bytes", str(REQUEST_LIMIT)]
    log = tmp_path_factory.mktemp("edge") / "edge.log"
    with EdgeProcess(
        [f"{FAMILY}={tiny_models[FAMILY].path}"], tls=tls, extra_args=args, threads=1, log_path=str(log)
    ) as process:
        yield process


def _model(deployment: Deployment, edge: EdgeProcess, tiny: TinyModel, session: str, **kwargs) -> SplitModel:
    conn = deployment.connect(edge.address, "dev-a", deployment.token(session))
    model = SplitModel.from_pretrained(
        tiny.path, edge=conn, model=FAMILY, device_layers=1, head_layers=1, seed=4,
        lora_config=kwargs.pop("lora_config", lora_config_for(FAMILY)), **kwargs,
    )  # fmt: skip
    model.configure_optimizer(torch.optim.AdamW, lr=1e-2)
    return model


def _step(model: SplitModel, seed: int = 0) -> None:
    assert model.optimizer is not None
    model(**make_batch(FAMILY, torch.Generator().manual_seed(seed))).loss.backward()
    model.optimizer.step()
    model.optimizer.zero_grad()


def _altered(state: State, change: Callable[[pb.SessionState, dict[str, torch.Tensor]], None]) -> State:
    header = pb.SessionState()
    header.CopyFrom(state[0])
    tensors = dict(state[1])
    change(header, tensors)
    return header, tensors


def _first(tensors: dict[str, torch.Tensor], prefix: str) -> str:
    return next(k for k in tensors if k.startswith(prefix) and tensors[k].dim() == 2)


def _set(field: str, value: object) -> Callable[[pb.SessionState, dict], None]:
    return lambda header, tensors: setattr(header, field, value)


def _tensor(name: Callable[[dict], str] | str, value: Callable[[torch.Tensor | None], torch.Tensor]):
    def change(header: pb.SessionState, tensors: dict[str, torch.Tensor]) -> None:
        key = name(tensors) if callable(name) else name
        tensors[key] = value(tensors.get(key))

    return change


def _generator(name: str, data: bytes) -> Callable[[pb.SessionState, dict], None]:
    return lambda header, tensors: header.generators.__setitem__(name, data)


def _drop_adapter_key(header: pb.SessionState, tensors: dict[str, torch.Tensor]) -> None:
    del tensors[_first(tensors, "adapter/")]


ADAPTER, OPTIM = (lambda t: _first(t, "adapter/")), (lambda t: _first(t, "optim/"))
CASES: list[tuple[str, Callable, type[SplitftError], str]] = [
    ("format", _set("format", 2), InvalidArgument, "format 2 is not 1"),
    ("codec", _set("codec", "fp16"), FailedPrecondition, "codec is 'fp16' in the state"),
    ("split", _set("trunk_start", 2), FailedPrecondition, "trunk_start is 2 in the state"),
    ("model", _set("hidden_size", 64), FailedPrecondition, "hidden_size is 64 in the state"),
    ("lora", _set("lora_config_json", '{"r": 8}'), FailedPrecondition, "lora_config_json is"),
    ("steps", _set("steps", 1 << 63), InvalidArgument, "out of range"),
    ("rng bytes", _generator("session", b"\x00" * 17), InvalidArgument, "generator 'session': not a CPU"),
    ("rng name", _generator("elsewhere", b""), InvalidArgument, "unknown generators"),
    ("adapter shape", _tensor(ADAPTER, lambda t: torch.zeros(3, 3)), InvalidArgument, "has shape"),
    ("adapter dtype", _tensor(ADAPTER, lambda t: t.to(torch.int64)), InvalidArgument, "must be float32"),
    ("adapter key", _drop_adapter_key, InvalidArgument, "missing"),
    ("prefix", _tensor("bogus/x", lambda t: torch.zeros(1)), InvalidArgument, "unknown session state tensor"),
    (
        "optim shape",
        _tensor(OPTIM, lambda t: torch.zeros(5)),
        InvalidArgument,
        r"optimizer state .* has shape",
    ),
    ("optim nan", _tensor(OPTIM, lambda t: torch.full_like(t, float("nan"))), InvalidArgument, "finite"),
    ("optim index", _tensor("optim/99999/exp_avg", lambda t: torch.zeros(())), InvalidArgument, "names no"),
    ("optimizer", _set("optimizer", "Adagrad"), InvalidArgument, "'Adagrad' is not supported"),
    ("groups", _set("optimizer_groups_json", "[1]"), InvalidArgument, "optimizer_groups_json must be"),
    ("group value", _set("optimizer_groups_json", '[{"lr": "x"}]'), InvalidArgument, "invalid entries"),
    ("direction", _tensor("wire/sideways/residual/x", lambda t: torch.zeros(2)), InvalidArgument, "names no"),
    (
        "codec state",
        _tensor("wire/hidden/residual/hidden", lambda t: torch.zeros(2)),
        InvalidArgument,
        "does not fit",
    ),
    (
        "wire key",
        _tensor("wire/grad/residual/parked", lambda t: torch.zeros(2)),
        InvalidArgument,
        "not state",
    ),
    (
        "oversized",
        _tensor("adapter/huge", lambda t: torch.zeros(REQUEST_LIMIT // 4 + 1)),
        ResourceExhausted,
        "",
    ),
]


def test_every_altered_state_is_refused_and_the_session_stays_as_it_was(
    deployment, edge, tiny_models
) -> None:
    tiny = tiny_models[FAMILY]
    source = _model(deployment, edge, tiny, "s-source")
    for step in range(2):
        _step(source, step)
    state = source._trunk.export_state()
    assert state[0].steps == 2 and any(k.startswith("optim/") for k in state[1])
    target = _model(deployment, edge, tiny, "s-target")
    fresh = target._trunk.export_state()
    for name, change, error, message in CASES:
        try:
            target._trunk.import_state(*_altered(state, change))
        except error as exc:
            assert re.search(message, str(exc)), f"{name}: {exc}"
        else:
            pytest.fail(f"{name}: the altered state was imported")
        now = target._trunk.export_state()
        assert now[0] == fresh[0] and all(torch.equal(now[1][k], v) for k, v in fresh[1].items()), name
    assert target._trunk.import_state(*state) == 2  # the unaltered state still imports
    _step(target)
    assert target.stats.steps == 3
    with pytest.raises(FailedPrecondition, match="before the session's first forward and step"):
        target._trunk.import_state(*state)
    target._trunk.forward(torch.zeros(1, 4, 32), {}, training=True, requires_grad=True, need_input_grad=True)
    with pytest.raises(FailedPrecondition, match="awaiting their backward"):
        target._trunk.export_state()
    for model in (source, target):
        model.close()
    assert_edge_serves(deployment, edge.address, tiny)


def test_another_device_cannot_export_or_import_a_session_it_does_not_own(
    deployment, edge, tiny_models
) -> None:
    tiny = tiny_models[FAMILY]
    owner = _model(deployment, edge, tiny, "s-owned")
    _step(owner)
    state = owner._trunk.export_state()
    token = deployment.token("s-thief", device="dev-b")
    with deployment.connect(edge.address, "dev-b", token) as thief:
        with pytest.raises(PermissionDenied):
            thief.stream("ExportSessionState", pb.ExportSessionStateRequest(session_id="s-owned"))
        header = pb.ImportSessionStateHeader(session_id="s-owned", state=state[0])
        requests = itertools.chain(
            [pb.ImportSessionStateRequest(header=header)],
            tensors_to_parts(state[1], "raw", into=pb.ImportSessionStateRequest),
        )
        with pytest.raises(PermissionDenied):
            thief.upload("ImportSessionState", requests)
        with pytest.raises(InvalidArgument, match="must start with a ImportSessionStateHeader"):
            thief.upload("ImportSessionState", iter([pb.ImportSessionStateRequest()]))
    owner.close()
    assert_edge_serves(deployment, edge.address, tiny)
