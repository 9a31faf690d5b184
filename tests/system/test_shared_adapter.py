"""A federated job's shared trunk adapter over real gRPC: sessions of one job step ONE trunk adapter
on the edge (each sees the others' updates), a session of another job cannot reach it, it trains
exactly like a session's own adapter, and it is freed once no session has held it for the TTL."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest
import torch

from device_client import EdgeConnection, SplitModel
from edge_server import EdgeConfig, EdgeServer
from splitft.errors import FailedPrecondition, InvalidArgument
from splitft.federated.shared_trunk import read_trunk_marks
from splitft.security.certs import init_ca, issue_device
from splitft.security.tokens import generate_issuer_key, issue_token, public_key_pem
from splitft.testing.tiny import TinyModel, lora_config_for, make_batch
from splitft.v1 import dataplane_pb2 as pb
from splitft.v1.dataplane_pb2_grpc import DataPlaneStub
from tests.support.split import split_llama

KEY = "job-1/r0"


def _trunk(model: SplitModel) -> dict[str, torch.Tensor]:
    return model._trunk.export_adapter()


def _train(model: SplitModel, steps: int, seed: int) -> None:
    optimizer = model.configure_optimizer(torch.optim.AdamW, lr=1e-2)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        model(**make_batch("llama", generator)).loss.backward()
        optimizer.clip_grad_norm_(1.0)
        optimizer.step()
        optimizer.zero_grad()


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def short_edge(tiny_models: dict[str, TinyModel]) -> Iterator[EdgeServer]:
    """An edge whose idle sessions (and idle shared adapters) expire after 1 s."""
    config = EdgeConfig(
        model_dirs=[f"llama={tiny_models['llama'].path}"], port=0, insecure=True, session_ttl=1.0
    )
    server = EdgeServer(config).start()
    yield server
    server.stop(grace=1)


def test_two_sessions_of_one_job_step_one_trunk_adapter(tiny_models, edge, conn, tmp_path) -> None:
    tiny = tiny_models["llama"]
    first = split_llama(tiny, conn, seed=1, shared_trunk_adapter="job-a/r0")
    second = split_llama(tiny, conn, seed=2, shared_trunk_adapter="job-a/r0")  # another seed: joins
    assert _equal(_trunk(first), _trunk(second)) and second._trunk.exported_steps == 0
    before = _trunk(second)
    _train(first, steps=2, seed=0)
    seen = _trunk(second)  # the second session has not trained: it sees the first's two steps
    assert not _equal(seen, before) and _equal(seen, _trunk(first))
    assert second._trunk.exported_steps == 2
    _train(second, steps=1, seed=1)
    assert second.stats.steps == 1 and first.stats.steps == 2  # each session counts its own steps
    assert _equal(_trunk(first), _trunk(second)) and first._trunk.exported_steps == 3
    second.save_adapter(tmp_path / "second")  # the export is marked with the steps it holds
    marks = read_trunk_marks(tmp_path / "second" / "adapter_model.safetensors")
    assert marks is not None and marks.steps == 3 and marks.adapter == "job-a/r0"
    assert marks.keys == set(_trunk(first))  # the trunk part, by name
    own = split_llama(tiny, conn, seed=1)  # the same seed without the key: an adapter of its own
    assert _equal(_trunk(own), before) and not _equal(_trunk(own), _trunk(first))
    for model in (first, second, own):
        model.close()


def test_a_shared_adapter_alone_trains_exactly_like_an_own_adapter(tiny_models, conn) -> None:
    tiny = tiny_models["llama"]
    results = []
    for key in ("", "job-b/r0"):
        model = split_llama(tiny, conn, seed=3, shared_trunk_adapter=key)
        _train(model, steps=3, seed=4)
        results.append(model.adapter_state_dict())
        model.close()
    assert _equal(results[0], results[1])


def test_sessions_must_agree_with_the_adapter_they_join(tiny_models, conn) -> None:
    tiny = tiny_models["llama"]
    first = split_llama(tiny, conn, seed=1, shared_trunk_adapter="job-c/r0")
    with pytest.raises(
        FailedPrecondition, match=r"cannot join the shared trunk adapter 'job-c/r0': it holds lora"
    ):
        split_llama(
            tiny, conn, seed=1, shared_trunk_adapter="job-c/r0", lora_config=lora_config_for("llama", r=2)
        )
    with pytest.raises(FailedPrecondition, match="it holds trunk_start=1, this session asks for 2"):
        split_llama(tiny, conn, seed=1, shared_trunk_adapter="job-c/r0", device_layers=2, head_layers=0)
    with pytest.raises(InvalidArgument, match="a shared trunk adapter is LoRA"):
        split_llama(tiny, conn, shared_trunk_adapter="job-c/r0", trunk_lora=False)
    with pytest.raises(InvalidArgument, match='shared_adapter must be "<job id>"'):
        split_llama(tiny, conn, shared_trunk_adapter="job-c/r0/x")
    _train(first, steps=1, seed=0)  # the adapter and its session go on
    second = split_llama(tiny, conn, seed=1, shared_trunk_adapter="job-c/r0")
    with pytest.raises(FailedPrecondition, match="steps with AdamW; this session asked for SGD"):
        second.configure_optimizer(torch.optim.SGD, lr=0.1)
    assert second._trunk.grad_norm_sq() == 0.0  # its own gradients: none yet, whatever the first has
    first.close()
    second.close()


def test_sessions_load_the_same_start_and_nothing_else_once_it_stepped(tiny_models, conn) -> None:
    tiny = tiny_models["llama"]
    source = split_llama(tiny, conn, seed=9)
    start = source.adapter_state_dict()
    source.close()
    first = split_llama(tiny, conn, seed=1, shared_trunk_adapter="job-d/r1")
    second = split_llama(tiny, conn, seed=1, shared_trunk_adapter="job-d/r1")
    first.load_adapter(start)
    _train(first, steps=1, seed=0)
    second.load_adapter(start)  # the round's global adapter again: accepted, changes nothing
    trained = _trunk(first)
    assert _equal(_trunk(second), trained)
    other = {k: v + 1 for k, v in start.items()}
    third = split_llama(tiny, conn, seed=1, shared_trunk_adapter="job-d/r1")
    with pytest.raises(FailedPrecondition, match="has already been started from another adapter"):
        third.load_adapter(other)
    assert _equal(_trunk(third), trained)
    for model in (first, second, third):
        model.close()


def test_the_adapter_lingers_then_is_freed_and_is_counted_once(tiny_models, short_edge) -> None:
    tiny, sessions = tiny_models["llama"], short_edge.sessions
    with EdgeConnection(short_edge.address, insecure=True) as conn:
        first = split_llama(tiny, conn, seed=1, shared_trunk_adapter="job-e/r0")
        second = split_llama(tiny, conn, seed=1, shared_trunk_adapter="job-e/r0")
        own = split_llama(tiny, conn, seed=1)
        grads = sum(v.numel() * 4 for v in _trunk(first).values())  # float32 LoRA values
        session_ids = [m.session_id for m in (first, second, own)]
        usage = {sid: sessions.memory.state_bytes(sid)[0] for sid in session_ids}
        assert usage[session_ids[0]] == usage[session_ids[1]] == grads  # gradients only
        assert usage[session_ids[2]] == grads * 4  # its own values, gradients, AdamW's two slots
        assert sessions.memory.state_bytes("shared-adapter/job-e/r0")[0] == grads * 3  # once
        first.close()
        second.close()
        assert sessions.shared.sessions("job-e/r0") == 0  # idle: a late device of the round joins it
        again = split_llama(tiny, conn, seed=5, shared_trunk_adapter="job-e/r0")
        assert sessions.shared.sessions("job-e/r0") == 1
        again.close()
        own.close()
        deadline = time.monotonic() + 10
        while sessions.shared.has("job-e/r0") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not sessions.shared.has("job-e/r0")
        assert sessions.memory.state_bytes("shared-adapter/job-e/r0") == (0, 0)
        assert sessions.memory.used() == 0


def test_a_new_round_frees_the_jobs_idle_adapter(tiny_models, edge, conn) -> None:
    tiny = tiny_models["llama"]
    split_llama(tiny, conn, seed=1, shared_trunk_adapter="job-f/r0").close()
    assert edge.sessions.shared.has("job-f/r0")
    split_llama(tiny, conn, seed=1, shared_trunk_adapter="job-g/r0").close()  # another job's: kept
    round1 = split_llama(tiny, conn, seed=1, shared_trunk_adapter="job-f/r1")
    assert not edge.sessions.shared.has("job-f/r0") and edge.sessions.shared.has("job-g/r0")
    round1.close()


# --- tokens: a session joins only its own job's adapter --------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    root = tmp_path_factory.mktemp("pki")
    paths = init_ca(root / "ca", ["127.0.0.1", "localhost"])
    issue_device(paths.directory, "dev-a")
    issuer = generate_issuer_key()
    (root / "issuer.pub").write_bytes(public_key_pem(issuer))
    return {"ca": paths, "issuer": issuer, "issuer_pub": root / "issuer.pub"}


@pytest.fixture(scope="module")
def secure_edge(pki, tiny_models):
    config = EdgeConfig(
        model_dirs=[f"llama={tiny_models['llama'].path}"],
        port=0,
        certs_dir=str(pki["ca"].directory),
        token_issuer_keys=[str(pki["issuer_pub"])],
        edge_id="edge-1",
    )
    server = EdgeServer(config).start()
    yield server
    server.stop(grace=1)


def _open(secure_edge, pki, session: str, job: str, key: str):
    """OpenSession through a raw stub: the gRPC status itself is what the test reads."""
    token = issue_token(pki["issuer"], session=session, device="dev-a", model="llama", edge="edge-1", job=job)
    paths = pki["ca"]
    credentials = grpc.ssl_channel_credentials(
        paths.ca_cert.read_bytes(),
        paths.device_key("dev-a").read_bytes(),
        paths.device_cert("dev-a").read_bytes(),
    )
    with grpc.secure_channel(secure_edge.address, credentials) as channel:
        request = pb.OpenSessionRequest(
            model="llama",
            device_layers=1,
            head_layers=1,
            codec="raw",
            trunk_lora=True,
            lora_config_json='{"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}',
            session_id=session,
            shared_adapter=key,
        )
        return DataPlaneStub(channel).OpenSession(request, metadata=[("authorization", f"Bearer {token}")])


def test_a_session_of_another_job_cannot_join(secure_edge, pki) -> None:
    opened = _open(secure_edge, pki, "s-a1", "job-a", "job-a/r0")
    assert opened.trunk_trainable_parameters > 0 and secure_edge.sessions.shared.sessions("job-a/r0") == 1
    with pytest.raises(grpc.RpcError) as refused:
        _open(secure_edge, pki, "s-b1", "job-b", "job-a/r0")
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert (
        "a session of job 'job-b' may join only its own job's shared trunk adapter" in refused.value.details()
    )
    with pytest.raises(grpc.RpcError) as no_job:
        _open(secure_edge, pki, "s-c1", "", "job-a/r0")
    assert no_job.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "names its job" in no_job.value.details()
    assert secure_edge.sessions.shared.sessions("job-a/r0") == 1  # nobody else got in
    assert _open(secure_edge, pki, "s-a2", "job-a", "job-a/r0").session_id == "s-a2"  # its own job joins
    assert secure_edge.sessions.shared.sessions("job-a/r0") == 2


def test_a_session_on_a_shared_adapter_is_not_checkpointed(tiny_models, conn, tmp_path) -> None:
    # Restoring a job's shared adapter from one session's checkpoint would undo the others' steps.
    model = split_llama(tiny_models["llama"], conn, seed=1, shared_trunk_adapter="job-c/r0")
    model.configure_optimizer(torch.optim.AdamW, lr=1e-3)
    with pytest.raises(FailedPrecondition, match="shared trunk adapter cannot be checkpointed"):
        model.checkpoint(tmp_path / "ck")
    with pytest.raises(FailedPrecondition, match="cannot checkpoint a session on a shared trunk adapter"):
        model._trunk.export_state()
    model.close()
