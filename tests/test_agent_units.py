"""Unit tests of the device agent's pieces: credential file, enrollment, REST errors, data, packing.

The control plane is an `httpx.MockTransport` here, and ONLY in these unit tests: they pin the
device side of the REST contract (paths, headers, bodies, error mapping) quickly and without a
server. The real end-to-end test, with a real control plane, edge and agent as separate processes,
lives in tests/test_control_e2e.py. The edge in the last tests is the real in-process gRPC edge of
conftest.py (plaintext), so the training path itself is not mocked.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import string
import tarfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from device_client.agent import (
    Assignment,
    DeviceAgent,
    JobSpec,
    LoraSpec,
    OptimizerSpec,
    ScheduleSpec,
    TaskEdgeSpec,
    TinyTrainSpec,
    failure_reason,
    lr_factor,
    method_config,
    pack_adapter,
    parse_assignment,
    parse_model_dirs,
    session_seed,
)
from device_client.credentials import DeviceCredential, enroll, error_from_http, request
from device_client.datasets import TextExample, as_examples, epoch_batches, load_jsonl, training_batches
from splitft.data.stdlib_task import Example
from splitft.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    ResourceExhausted,
    SplitftError,
    Unauthenticated,
    Unavailable,
)
from splitft.methods.tinytrain import TinyTrainConfig
from splitft.security.tokens import generate_issuer_key, issue_token

CP = "http://127.0.0.1:8000"  # loopback: plaintext to another host needs insecure=True


def credential(**overrides: Any) -> DeviceCredential:
    values: dict[str, Any] = {
        "control_plane": CP + "/",
        "device_id": "dev-1",
        "device_name": "phone-17",
        "credential": "sfd_secret-credential",
        "certificate_pem": "-----BEGIN CERTIFICATE-----\n...",
        "key_pem": "-----BEGIN PRIVATE KEY-----\n...",
        "ca_pem": "-----BEGIN CERTIFICATE-----\nca",
    }
    values.update(overrides)
    return DeviceCredential(**values)


# --- credential file -----------------------------------------------------------------------------


def test_credential_round_trip_is_private(tmp_path: Path) -> None:
    cred = credential()
    path = cred.save(tmp_path / "sub" / "device.json")
    assert path.stat().st_mode & 0o777 == 0o600
    loaded = DeviceCredential.load(path)
    assert loaded == cred
    assert loaded.control_plane == CP  # trailing slash dropped
    assert "sfd_secret" not in repr(loaded) and "PRIVATE KEY" not in repr(loaded)
    assert loaded.auth_headers == {"Authorization": "Bearer sfd_secret-credential"}


def test_credential_refuses_overwrite_unless_forced(tmp_path: Path) -> None:
    path = tmp_path / "device.json"
    path.write_text("old")
    path.chmod(0o644)
    with pytest.raises(AlreadyExists, match="refusing to overwrite"):
        credential().save(path)
    assert path.read_text() == "old"
    credential(device_name="phone-18").save(path, force=True)
    assert path.stat().st_mode & 0o777 == 0o600
    assert DeviceCredential.load(path).device_name == "phone-18"
    assert [p.name for p in tmp_path.iterdir()] == ["device.json"]  # no temporary file left


@pytest.mark.parametrize(
    ("content", "error", "match"),
    [
        ("{not json", InvalidArgument, "not valid JSON"),
        ("[1, 2]", InvalidArgument, "JSON object"),
        ('{"control_plane": "http://x", "device_id": "d"}', InvalidArgument, "lacks device_name, credential"),
        (
            '{"control_plane": "http://x", "device_id": "d", "device_name": "n", "credential": 5}',
            InvalidArgument,
            "credential must be a string",
        ),
        (
            '{"control_plane": "ftp://x", "device_id": "d", "device_name": "n", "credential": "c"}',
            InvalidArgument,
            "http:// or https://",
        ),
        (
            '{"format": 9, "control_plane": "http://x", "device_id": "d", "device_name": "n", '
            '"credential": "c"}',
            InvalidArgument,
            "unknown format",
        ),
    ],
)
def test_credential_load_errors(tmp_path: Path, content: str, error: type[Exception], match: str) -> None:
    path = tmp_path / "device.json"
    path.write_text(content)
    with pytest.raises(error, match=match):
        DeviceCredential.load(path)


def test_credential_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="splitft device enroll"):
        DeviceCredential.load(tmp_path / "absent.json")


# --- enrollment and HTTP errors ------------------------------------------------------------------


def test_enroll_sends_a_csr_and_saves_the_key(tmp_path: Path) -> None:
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return httpx.Response(
            200,
            json={
                "id": "d-9",
                "name": "phone-17",
                "credential": "sfd_x",
                "certificate_pem": "C",
                "ca_pem": "A",
            },
        )

    out = tmp_path / "device.json"
    with httpx.Client(transport=httpx.MockTransport(handler)) as http:
        cred = enroll(CP, "enroll-token-123", out, http=http)
    (req,) = seen
    assert (req.method, str(req.url)) == ("POST", f"{CP}/v1/devices/enroll")
    assert "authorization" not in req.headers  # the one-time token in the body is the authentication
    body = json.loads(req.content)
    assert body["enrollment_token"] == "enroll-token-123"
    csr = x509.load_pem_x509_csr(body["csr_pem"].encode())
    assert csr.is_signature_valid
    key_pem = DeviceCredential.load(out).key_pem
    assert key_pem is not None
    key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert csr.public_key() == key.public_key()
    assert (cred.device_id, cred.device_name, cred.certificate_pem, cred.ca_pem) == (
        "d-9",
        "phone-17",
        "C",
        "A",
    )
    assert out.stat().st_mode & 0o777 == 0o600


def test_enroll_does_not_spend_the_token_when_it_cannot_save(tmp_path: Path) -> None:
    out = tmp_path / "device.json"
    out.write_text("{}")

    def handler(req: httpx.Request) -> httpx.Response:
        raise AssertionError("no request may be sent")

    with httpx.Client(transport=httpx.MockTransport(handler)) as http:
        with pytest.raises(AlreadyExists):
            enroll(CP, "enroll-token-123", out, http=http)


@pytest.mark.parametrize(
    ("status", "detail", "error"),
    [
        (400, "bad", InvalidArgument),
        (401, "invalid or already used enrollment token", Unauthenticated),
        (403, "not yours", PermissionDenied),
        (404, "unknown session", NotFound),
        (409, "device phone-17 already exists", AlreadyExists),
        (409, "session is not running", FailedPrecondition),
        (413, "too big", PayloadTooLarge),
        (422, [{"loc": ["body", "reason"], "msg": "Field required"}], InvalidArgument),
        (429, "slow down", ResourceExhausted),
        (500, "boom", Unavailable),
        (503, "draining", Unavailable),
    ],
)
def test_http_errors_map_to_the_catalog(status: int, detail: Any, error: type[SplitftError]) -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json={"detail": detail})

    with httpx.Client(transport=httpx.MockTransport(handler)) as http:
        with pytest.raises(error) as caught:
            request(http, "POST", f"{CP}/v1/sessions/s-1/fail")
    assert type(caught.value) is error
    expected = "reason: Field required" if isinstance(detail, list) else detail
    assert caught.value.message == f"POST /v1/sessions/s-1/fail -> {status}: {expected}"


def test_http_connection_failure_and_plain_text_errors() -> None:
    def refuse(req: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=req)

    with httpx.Client(transport=httpx.MockTransport(refuse)) as http:
        with pytest.raises(Unavailable, match="unreachable.*ConnectError"):
            request(http, "GET", f"{CP}/v1/assignments/next")
    assert error_from_http(502, "Bad Gateway").message == "HTTP 502: Bad Gateway"
    assert type(error_from_http(418, "teapot")) is InvalidArgument


# --- data ----------------------------------------------------------------------------------------


def test_jsonl_loads_and_skips_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "good", "label": 0}\n\n{"text": "bad", "label": 1, "extra": true}\n')
    assert load_jsonl(path) == [TextExample("good", 0), TextExample("bad", 1)]


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ('{"text": "x", "label": 0', "not valid JSON"),
        ('["x", 0]', "expected a JSON object"),
        ('{"label": 0}', 'missing "text"'),
        ('{"text": "x"}', 'missing "label"'),
        ('{"text": "   ", "label": 0}', '"text" is empty'),
        ('{"text": 3, "label": 0}', '"text" must be a string'),
        ('{"text": "x", "label": "1"}', "integer class index, got str"),
        ('{"text": "x", "label": 1.5}', "integer class index, got float"),
        ('{"text": "x", "label": true}', "integer class index, got bool"),
        ('{"text": "x", "label": -1}', "must be >= 0"),
    ],
)
def test_jsonl_errors_name_the_line(tmp_path: Path, line: str, match: str) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "fine", "label": 0}\n\n' + line + "\n")
    with pytest.raises(InvalidArgument, match=match) as caught:
        load_jsonl(path)
    assert caught.value.message.startswith(f"{path}:3: ")


def test_jsonl_file_level_errors(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        load_jsonl(tmp_path / "absent.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(InvalidArgument, match="no examples"):
        load_jsonl(tmp_path / "empty.jsonl")
    (tmp_path / "latin1.jsonl").write_bytes(b'{"text": "ok", "label": 0}\n{"text": "caf\xe9", "label": 0}\n')
    with pytest.raises(InvalidArgument, match=r"latin1.jsonl:2: not UTF-8"):
        load_jsonl(tmp_path / "latin1.jsonl")


def test_sdk_datasets_are_coerced_and_checked() -> None:
    got = as_examples([Example("a", 1), {"text": "b", "label": 0}, ("c", 2), TextExample("d", 0)])
    assert got == [TextExample("a", 1), TextExample("b", 0), TextExample("c", 2), TextExample("d", 0)]
    with pytest.raises(InvalidArgument, match=r"^example 1: \"label\" must be >= 0"):
        as_examples([("a", 0), ("b", -2)])
    with pytest.raises(InvalidArgument, match="empty"):
        as_examples([])


def test_batches_are_deterministic_per_seed_and_epoch() -> None:
    examples = [TextExample(f"t{i}", i % 3) for i in range(10)]

    def order(seed: int, epoch: int) -> list[str]:
        return [t for texts, _ in epoch_batches(examples, 4, seed=seed, epoch=epoch) for t in texts]

    assert order(7, 0) == order(7, 0)
    assert sorted(order(7, 0)) == sorted(e.text for e in examples)  # each example once per epoch
    assert order(7, 0) != order(7, 1) and order(7, 0) != order(8, 0)
    sizes = [len(texts) for texts, _ in epoch_batches(examples, 4, seed=7, epoch=0)]
    assert sizes == [4, 4, 2]
    first = next(epoch_batches(examples, 4, seed=7, epoch=0))
    assert first[1] == [int(t[1:]) % 3 for t in first[0]]  # labels stay with their texts
    assert len(list(training_batches(examples, 4, seed=7, epochs=2))) == 6
    endless = training_batches(examples, 4, seed=7)
    assert len([next(endless) for _ in range(10)]) == 10


# --- pure pieces of a session --------------------------------------------------------------------


def write_adapter(directory: Path) -> dict[str, bytes]:
    files = {
        "adapter_config.json": b'{"r": 4}',
        "adapter_model.safetensors": bytes(range(256)) * 4,
        "README.md": b"notes",
    }
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return files


def test_adapter_archive_round_trips_and_passes_the_server_check(tmp_path: Path) -> None:
    from splitft_control.archive import check_adapter_archive

    files = write_adapter(tmp_path / "adapter")
    archive = pack_adapter(tmp_path / "adapter")
    check_adapter_archive(archive)  # the control plane's own validation of /complete uploads
    assert pack_adapter(tmp_path / "adapter") == archive  # reproducible bytes
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        tar.extractall(tmp_path / "out", filter="data")
    files.pop("README.md")  # not part of an adapter: left out, the control plane would refuse it
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == files
    (tmp_path / "adapter" / "adapter_model.safetensors").unlink()
    with pytest.raises(FailedPrecondition, match="lacks adapter_model.safetensors"):
        pack_adapter(tmp_path / "adapter")


def test_lr_schedules_match_hand_computation() -> None:
    assert [lr_factor("constant", s, 2, 10) for s in range(4)] == [0.0, 0.5, 1.0, 1.0]
    assert [lr_factor("linear", s, 2, 10) for s in (2, 6, 10)] == [1.0, 0.5, 0.0]
    assert lr_factor("cosine", 6, 2, 10) == pytest.approx(0.5)
    assert lr_factor("cosine", 10, 0, 10) == pytest.approx(0.0)
    with pytest.raises(InvalidArgument, match="unknown LR schedule"):
        lr_factor("step", 5, 0, 10)


def test_session_seed_and_failure_reason() -> None:
    assert session_seed("s-1") == session_seed("s-1") != session_seed("s-2")
    assert 0 <= session_seed("s-1") < 2**62
    assert failure_reason(NotFound("no model 'x'")) == "NotFound: no model 'x'"
    assert failure_reason(RuntimeError("first line\nsecret second line")) == "RuntimeError: first line"
    assert failure_reason(KeyboardInterrupt()) == "interrupted on the device"
    assert len(failure_reason(InvalidArgument("x" * 5000))) == 500


def test_parse_model_dirs(tmp_path: Path) -> None:
    (tmp_path / "minilm").mkdir()
    assert parse_model_dirs([f"bert={tmp_path / 'minilm'}", str(tmp_path / "minilm")]) == {
        "bert": tmp_path / "minilm",
        "minilm": tmp_path / "minilm",
    }
    with pytest.raises(NotFound):
        parse_model_dirs([f"x={tmp_path / 'absent'}"])
    with pytest.raises(InvalidArgument, match="twice"):
        parse_model_dirs([f"a={tmp_path / 'minilm'}", f"a={tmp_path / 'minilm'}"])


# --- the assignment mirror stays in step with services/schemas.py --------------------------------


def job_spec_json(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "job",
        "model": "bert",
        "device_layers": 1,
        "head_layers": 1,
        "lora": {"r": 4, "lora_alpha": 8, "target_modules": ["query", "value"], "task_type": "SEQ_CLS"},
        "steps": 4,
        "batch_size": 4,
        "max_length": 16,
        "devices": ["phone-17"],
    }
    body.update(overrides)
    return body


def test_mirror_fields_exist_in_the_rest_schema() -> None:
    from splitft_control import schemas

    pairs = [
        (JobSpec, schemas.JobCreate),
        (LoraSpec, schemas.LoraSpec),
        (OptimizerSpec, schemas.OptimizerSpec),
        (ScheduleSpec, schemas.ScheduleSpec),
        (TaskEdgeSpec, schemas.TaskEdgeSpec),
        (TinyTrainSpec, schemas.TinyTrainSpec),
        (Assignment, schemas.Assignment),
    ]
    for mirror, model in pairs:
        assert {f.name for f in fields(mirror)} <= set(model.model_fields), mirror.__name__
    rest = schemas.Assignment(
        session_id="s-1",
        job_id="j-1",
        edge_address="127.0.0.1:1",
        token="t",
        spec=schemas.JobCreate.model_validate(job_spec_json()),
    ).model_dump(mode="json")
    parsed = parse_assignment(rest)
    assert parsed.spec.lora == LoraSpec(["query", "value"], 4, 8, 0.0, "SEQ_CLS")
    assert (parsed.spec.optimizer, parsed.spec.schedule) == (OptimizerSpec(), ScheduleSpec())
    assert parsed.spec.clip_grad_norm == 1.0 and parsed.spec.epochs is None


def test_a_tinytrain_job_becomes_the_sdk_config_with_null_budgets_as_no_limit() -> None:
    from splitft_control import schemas

    spec = job_spec_json(method="tinytrain", lora=None, tinytrain={"memory_budget_bytes": 5e5})
    rest = schemas.Assignment(
        session_id="s-1", job_id="j-1", edge_address="127.0.0.1:1", token="t",
        spec=schemas.JobCreate.model_validate(spec),
    ).model_dump(mode="json")  # fmt: skip
    config = method_config(parse_assignment(rest).spec)
    assert isinstance(config, TinyTrainConfig)
    assert config.memory_budget_bytes == 5e5 and config.compute_budget_macs == math.inf
    assert config.channel_ratios == (1.0, 0.5, 0.25, 0.125)


@pytest.mark.parametrize("broken", [{"spec": None}, {"spec": job_spec_json(steps=None)}, {"token": None}])
def test_malformed_assignments_are_the_servers_fault(broken: dict[str, Any]) -> None:
    raw = {"session_id": "s", "job_id": "j", "edge_address": "h:1", "token": "t", "spec": job_spec_json()}
    raw.update(broken)
    if raw["token"] is None:
        del raw["token"]
    with pytest.raises(Unavailable, match="malformed|exactly one"):
        parse_assignment(raw)


# --- the agent against a mock control plane ------------------------------------------------------


@dataclass
class FakeControlPlane:
    """Records what the agent sends; hands out `assignments` in order, then 204 with Retry-After."""

    assignments: list[dict[str, Any]] = field(default_factory=list)
    status_for: Callable[[httpx.Request], int | None] = lambda req: None
    calls: list[tuple[str, str]] = field(default_factory=list)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    uploads: dict[str, bytes] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)

    def __call__(self, req: httpx.Request) -> httpx.Response:
        self.calls.append((req.method, req.url.path))
        assert req.headers["authorization"] == "Bearer sfd_secret-credential"
        forced = self.status_for(req)
        if forced is not None:
            return httpx.Response(forced, json={"detail": "forced"})
        parts = req.url.path.split("/")
        if req.url.path == "/v1/assignments/next":
            if not self.assignments:
                return httpx.Response(204, headers={"Retry-After": "0"})
            return httpx.Response(200, json=self.assignments.pop(0))
        if parts[-1] == "metrics":
            self.metrics.extend(json.loads(req.content)["points"])
        elif parts[-1] == "complete":
            assert req.headers["content-type"] == "application/gzip"
            self.uploads[parts[-2]] = req.content
        elif parts[-1] == "fail":
            self.failures[parts[-2]] = json.loads(req.content)["reason"]
        return httpx.Response(204)


def make_agent(fake: FakeControlPlane, model_dirs: dict[str, Path], data: Any, **kwargs: Any) -> DeviceAgent:
    http = httpx.Client(transport=httpx.MockTransport(fake))
    return DeviceAgent(credential(), model_dirs, data, poll_interval=0.01, http=http, **kwargs)


def assignment_json(session_id: str, address: str = "127.0.0.1:1", **spec: Any) -> dict[str, Any]:
    token = issue_token(generate_issuer_key(), session=session_id, device="phone-17", model="bert")
    return {
        "session_id": session_id,
        "job_id": "j-1",
        "edge_address": address,
        "token": token,
        "spec": job_spec_json(**spec),
    }


DATA = [
    TextExample(text, i % 3) for i, text in enumerate(["abc", "hello world", "split fine tuning", "xyz"] * 3)
]


def test_no_assignment_polls_again_and_run_stops() -> None:
    fake = FakeControlPlane()
    with make_agent(fake, {}, DATA) as agent:
        assert agent.run_once() is None
        stop = threading.Event()
        timer = threading.Timer(0.2, stop.set)
        timer.start()
        summary = agent.run(stop=stop)
        timer.join()
    assert summary.handled == 0
    assert len(fake.calls) > 2 and set(fake.calls) == {("GET", "/v1/assignments/next")}


def test_revoked_credential_stops_the_agent() -> None:
    fake = FakeControlPlane(status_for=lambda req: 401)
    with make_agent(fake, {}, DATA) as agent, pytest.raises(Unauthenticated, match="forced"):
        agent.run()


def test_unknown_model_is_reported_as_a_failure(tmp_path: Path) -> None:
    fake = FakeControlPlane(assignments=[assignment_json("s-unknown", model="llama-70b")])
    with make_agent(fake, {"bert": tmp_path}, DATA) as agent:
        with pytest.raises(NotFound, match="no local directory for model 'llama-70b'"):
            agent.run_once()
        fake.assignments.append(assignment_json("s-unknown-2", model="llama-70b"))
        summary = agent.run(max_sessions=1)  # run() logs a failed session and goes on
    assert summary.failed == ["s-unknown-2"] and summary.completed == []
    assert fake.failures["s-unknown"].startswith("NotFound: this device has no local directory")
    assert fake.uploads == {}


# --- a real training session: real in-process edge, mock control plane only ----------------------


@pytest.fixture(scope="module")
def bert_with_tokenizer(tiny_models: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BERT plus a small WordPiece tokenizer over its 128-id vocabulary."""
    from transformers import BertTokenizer

    directory = tmp_path_factory.mktemp("device-model") / "bert"
    shutil.copytree(tiny_models["bert"].path, directory)
    pieces = list(string.ascii_lowercase) + list(string.digits) + ["##" + c for c in string.ascii_lowercase]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *pieces]
    BertTokenizer(vocab={word: i for i, word in enumerate(vocab)}).save_pretrained(str(directory))
    return directory


def test_agent_trains_reports_and_uploads_reproducibly(edge: Any, bert_with_tokenizer: Path) -> None:
    spec = {"steps": 5, "schedule": {"name": "linear", "warmup_steps": 1}, "optimizer": {"lr": 0.01}}
    fake = FakeControlPlane(assignments=[assignment_json("s-train", edge.address, **spec)])
    seen: list[int] = []
    with make_agent(
        fake,
        {"bert": bert_with_tokenizer},
        DATA,
        metrics_every=2,
        insecure=True,
        progress=lambda p: seen.append(p.step),
    ) as agent:
        assert agent.run_once() == "s-train"
        fake.assignments.append(assignment_json("s-train", edge.address, **spec))
        first = fake.uploads.pop("s-train")
        assert agent.run(max_sessions=1).completed == ["s-train"]
    assert seen == [1, 2, 3, 4, 5] * 2
    assert [p["step"] for p in fake.metrics] == [2, 4, 5] * 2
    point = fake.metrics[0]
    assert point["loss"] > 0 and point["examples_per_second"] > 0 and point["bytes_sent"] > 0
    assert fake.uploads["s-train"] == first  # same session id and data: the same adapter, byte for byte
    with tarfile.open(fileobj=io.BytesIO(first), mode="r:gz") as tar:
        assert sorted(tar.getnames()) == ["adapter_config.json", "adapter_model.safetensors"]
        config = json.loads(tar.extractfile("adapter_config.json").read())  # type: ignore[union-attr]
    assert (config["r"], config["lora_alpha"], config["task_type"]) == (4, 8, "SEQ_CLS")
    assert fake.failures == {}


def test_agent_reports_bad_labels_without_the_data(edge: Any, bert_with_tokenizer: Path) -> None:
    data = [TextExample("secret text", 7)]
    fake = FakeControlPlane(assignments=[assignment_json("s-labels", edge.address)])
    with make_agent(fake, {"bert": bert_with_tokenizer}, data, insecure=True) as agent:
        with pytest.raises(InvalidArgument, match="labels >= num_labels"):
            agent.run_once()
    assert (
        "secret" not in fake.failures["s-labels"] and "labels >= num_labels (3)" in fake.failures["s-labels"]
    )


def test_agent_without_tls_identity_refuses_to_dial(bert_with_tokenizer: Path) -> None:
    fake = FakeControlPlane(assignments=[assignment_json("s-tls")])
    http = httpx.Client(transport=httpx.MockTransport(fake))
    cred = credential(certificate_pem=None)
    with DeviceAgent(cred, {"bert": bert_with_tokenizer}, DATA, http=http) as agent:
        with pytest.raises(FailedPrecondition, match="mutual TLS"):
            agent.run_once()
    assert fake.failures["s-tls"].startswith("FailedPrecondition")


def test_file_modes_hold_under_a_loose_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        path = credential().save(tmp_path / "device.json")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o600


def test_enrolled_device_trains_over_mutual_tls(
    tmp_path: Path, tiny_models: Any, bert_with_tokenizer: Path
) -> None:
    """Enroll (the mock signs the CSR with the real CA code, as the control plane does), then train
    through a real mTLS edge that checks the token's device against the certificate's CN."""
    from edge_server import EdgeConfig, EdgeServer
    from splitft.security.certs import init_ca, sign_device_key
    from splitft.security.tokens import public_key_pem

    ca = init_ca(tmp_path / "ca", ["127.0.0.1"])
    issuer = generate_issuer_key()
    (tmp_path / "issuer.pub").write_bytes(public_key_pem(issuer))

    def enroll_handler(req: httpx.Request) -> httpx.Response:
        csr = x509.load_pem_x509_csr(json.loads(req.content)["csr_pem"].encode())
        cert = sign_device_key(ca.directory, "phone-17", csr.public_key())
        body = {
            "id": "d-1",
            "name": "phone-17",
            "credential": "sfd_secret-credential",
            "certificate_pem": cert.public_bytes(serialization.Encoding.PEM).decode(),
            "ca_pem": ca.ca_cert.read_text(),
        }
        return httpx.Response(200, json=body)

    with httpx.Client(transport=httpx.MockTransport(enroll_handler)) as http:
        cred = enroll(CP, "enroll-token-123", tmp_path / "device.json", http=http)
    config = EdgeConfig(
        model_dirs=[f"bert={tiny_models['bert'].path}"],
        port=0,
        certs_dir=str(ca.directory),
        token_issuer_keys=[str(tmp_path / "issuer.pub")],
    )
    server = EdgeServer(config).start()
    try:
        assignment = assignment_json("s-mtls", server.address)
        assignment["token"] = issue_token(issuer, session="s-mtls", device="phone-17", model="bert")
        fake = FakeControlPlane(assignments=[assignment])
        http = httpx.Client(transport=httpx.MockTransport(fake))
        with DeviceAgent(tmp_path / "device.json", {"bert": bert_with_tokenizer}, DATA, http=http) as agent:
            assert agent.credential == cred
            assert agent.run_once() == "s-mtls"
    finally:
        server.stop(grace=1)
    assert fake.failures == {} and "s-mtls" in fake.uploads


def test_a_model_dir_without_tokenizer_is_refused(tiny_models: Any) -> None:
    """transformers would hand back an empty tokenizer here; training on [UNK]s must not start."""
    fake = FakeControlPlane(assignments=[assignment_json("s-notok")])
    with make_agent(fake, {"bert": tiny_models["bert"].path}, DATA, insecure=True) as agent:
        with pytest.raises(FailedPrecondition, match="no tokenizer files"):
            agent.run_once()
    assert fake.failures["s-notok"].startswith("FailedPrecondition")


def test_a_refused_upload_is_reported_as_a_failure(edge: Any, bert_with_tokenizer: Path) -> None:
    def refuse_upload(req: httpx.Request) -> int | None:
        return 400 if req.url.path.endswith("/complete") else None

    fake = FakeControlPlane(
        assignments=[assignment_json("s-refused", edge.address)], status_for=refuse_upload
    )
    with make_agent(fake, {"bert": bert_with_tokenizer}, DATA, insecure=True) as agent:
        with pytest.raises(InvalidArgument, match="forced"):
            agent.run_once()
    assert fake.failures["s-refused"].startswith("adapter upload failed: InvalidArgument")
