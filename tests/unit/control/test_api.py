"""The REST control plane in-process (FastAPI TestClient on SQLite): auth, validation, enrollment,
adapters, assignments, scheduling reasons, health and metrics; hostile input on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import logging
import re
import stat
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fastapi.testclient import TestClient
from sqlalchemy import select

from splitft.errors import InvalidArgument
from splitft.security.certs import init_ca
from splitft.security.tokens import load_public_key, verify_token
from splitft_control.app import build_state, create_app
from splitft_control.models import ApiKey, Edge, utcnow
from splitft_control.state import ControlState
from tests.support.control_fixtures import (
    EDGE_SECRET,
    MODEL,
    OPERATOR_KEY,
    adapter_archive,
    add_device,
    app_on,
    bearer,
    control_settings,
    create_job,
    job_body,
    register_edge,
    tar_gz,
)

OPERATOR = bearer(OPERATOR_KEY)
GZIP = {"Content-Type": "application/gzip"}


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    """No lifespan (no `with`): the scheduler thread stays off and tests call schedule_once themselves."""
    return TestClient(create_app(control_settings(tmp_path)))


def control(client: TestClient) -> ControlState:
    return client.app.state.control  # type: ignore[attr-defined]


def assert_status(response: Any, code: int) -> Any:
    assert response.status_code == code, response.text
    return response.json() if response.content else {}


def assert_unauthenticated(response: Any) -> None:
    assert_status(response, 401)
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.json()["detail"]


def running_session(client: TestClient, device: str = "phone") -> tuple[str, dict[str, Any], dict[str, Any]]:
    """An edge, an enrolled device and a job whose session the device has picked up."""
    edge = register_edge(client, "edge-a")
    credential = add_device(client, device)
    job = create_job(client, [device])
    assignment = assert_status(client.get("/v1/assignments/next", headers=bearer(credential)), 200)
    assert assignment["job_id"] == job["id"]
    return credential, assignment, edge


# --- 401 vs 403 ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic b3A6b3A="},
        bearer("sfk_wrong"),
        bearer(EDGE_SECRET),
    ],
    ids=["missing", "empty", "basic", "wrong-key", "edge-secret"],
)
def test_operator_routes_without_a_valid_key_are_401(client: TestClient, headers: dict[str, str]) -> None:
    for method, path in [
        ("GET", "/v1/jobs"),
        ("GET", "/v1/edges"),
        ("GET", "/v1/devices"),
        ("POST", "/v1/jobs"),
    ]:
        assert_unauthenticated(client.request(method, path, headers=headers, json=job_body(["phone"])))


def test_a_revoked_operator_key_is_401(client: TestClient) -> None:
    row, key = control(client).store.create_api_key(name="temp")
    assert_status(client.get("/v1/jobs", headers=bearer(key)), 200)
    control(client).store.revoke_api_key(key_id=row.id)
    assert_unauthenticated(client.get("/v1/jobs", headers=bearer(key)))


def test_device_credential_is_no_operator_key_and_vice_versa(client: TestClient) -> None:
    credential = add_device(client, "phone")
    assert_unauthenticated(client.get("/v1/jobs", headers=bearer(credential)))
    assert_unauthenticated(client.get("/v1/assignments/next", headers=OPERATOR))
    assert_unauthenticated(client.get("/v1/assignments/next"))


def test_another_devices_session_is_403(client: TestClient) -> None:
    _, assignment, _ = running_session(client)
    intruder = bearer(add_device(client, "intruder"))
    sid = assignment["session_id"]
    report = {"points": [{"step": 1, "loss": 0.5}]}
    assert_status(client.post(f"/v1/sessions/{sid}/metrics", json=report, headers=intruder), 403)
    assert_status(client.post(f"/v1/sessions/{sid}/fail", json={"reason": "x"}, headers=intruder), 403)
    upload = client.post(f"/v1/sessions/{sid}/complete", content=adapter_archive(), headers=intruder | GZIP)
    assert_status(upload, 403)
    assert_status(client.post(f"/v1/sessions/{uuid.uuid4().hex}/metrics", json=report, headers=intruder), 404)


def test_edge_heartbeat_with_another_edges_credential_is_403(client: TestClient) -> None:
    a, b = register_edge(client, "edge-a"), register_edge(client, "edge-b")
    beat = {"active_sessions": 1, "capacity": {"memory_free_bytes": 1024, "max_sessions": 3}}
    assert_status(
        client.post(f"/v1/edges/{b['id']}/heartbeat", json=beat, headers=bearer(a["credential"])), 403
    )
    assert_unauthenticated(
        client.post(f"/v1/edges/{a['id']}/heartbeat", json=beat, headers=bearer("sfe_nope"))
    )
    assert_unauthenticated(client.post(f"/v1/edges/{a['id']}/heartbeat", json=beat))
    own = assert_status(
        client.post(f"/v1/edges/{a['id']}/heartbeat", json=beat, headers=bearer(a["credential"])), 200
    )
    # An edge of before memory admission (no limit, no models): the answer says it reports no memory.
    expected = {"memory_free_bytes": 1024, "max_sessions": 3, "memory_limit_bytes": 0, "models": {}}
    assert own["capacity"] == expected and own["active_sessions"] == 1


def test_edge_memory_in_a_heartbeat_is_validated(client: TestClient) -> None:
    a = register_edge(client, "edge-a")
    profile = {
        "num_layers": 4,
        "dtype_bytes": 4,
        "forward_token": 256.0,
        "forward_token2": 0.0,
        "block_token": 1424.0,
        "block_token2": 4.0,
    }
    model = {"session_bytes": 1000, "sessions_free": 3, "profile": profile}
    capacity = {"max_sessions": 3, "memory_free_bytes": 3000, "memory_limit_bytes": 4000}
    url, headers = f"/v1/edges/{a['id']}/heartbeat", bearer(a["credential"])
    beat = {"active_sessions": 0, "capacity": {**capacity, "models": {MODEL: model}}}
    stored = assert_status(client.post(url, json=beat, headers=headers), 200)["capacity"]
    assert stored["models"][MODEL]["profile"]["block_token"] == 1424.0
    assert stored["memory_limit_bytes"] == 4000
    for bad in ({**profile, "block_token": -1.0}, {**profile, "surprise": 1}, {**profile, "num_layers": 0}):
        beat["capacity"]["models"] = {MODEL: {**model, "profile": bad}}  # type: ignore[index]
        assert_status(client.post(url, json=beat, headers=headers), 422)
    beat["capacity"]["models"] = {MODEL: {**model, "profile": {**profile, "block_token": -1.0}}}  # type: ignore[index]
    nan = json.dumps(beat).replace("-1.0", "NaN")  # json.dumps writes NaN; PostgreSQL would refuse it
    sent = client.post(url, content=nan, headers={**headers, "Content-Type": "application/json"})
    assert_status(sent, 422)


@pytest.mark.parametrize(
    "headers", [{}, bearer("not-the-edge-secret"), OPERATOR], ids=["missing", "wrong", "operator"]
)
def test_edge_register_without_the_edge_secret_is_401(client: TestClient, headers: dict[str, str]) -> None:
    body = {"name": "edge-a", "address": "127.0.0.1:50051", "models": [MODEL]}
    assert_unauthenticated(client.post("/v1/edges/register", json=body, headers=headers))


# --- secrets at start ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {"edge_secret": None},
        {"edge_secret": ""},
        {"edge_secret": "changeme"},
        {"edge_secret": "short-secret"},
        {"operator_key": "password"},
        {"operator_key": "x" * 15},
    ],
    ids=["edge-missing", "edge-empty", "edge-default", "edge-short", "operator-default", "operator-short"],
)
def test_weak_secrets_are_refused_outside_dev_mode(tmp_path: Path, overrides: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgument, match="at least 16"):
        build_state(control_settings(tmp_path, **overrides))
    build_state(control_settings(tmp_path, dev_mode=True, **overrides))  # an explicit local experiment


def test_the_first_operator_key_is_generated_once_and_stored_hashed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = control_settings(tmp_path, operator_key=None)
    with caplog.at_level(logging.WARNING, logger="splitft_control.app"):
        state = build_state(settings)
    key_file = tmp_path / "operator.key"
    (key,) = re.findall(r"sfk_[\w-]+", key_file.read_text())
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert "sfk_" not in caplog.text and str(key_file) in caplog.text  # the log names the file only
    with state.store.engine.connect() as conn:
        stored = " ".join(str(v) for row in conn.execute(select(ApiKey.__table__)) for v in row)
    assert key not in stored and state.store.count_api_keys() == 1
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="splitft_control.app"):
        again = build_state(settings)  # a restart on the same database prints nothing new
    assert "sfk_" not in caplog.text and again.store.count_api_keys() == 1
    client = TestClient(create_app(settings, again))
    assert_status(client.get("/v1/jobs", headers=bearer(key)), 200)


# --- validation and lookups ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, body",
    [
        ("/v1/jobs", job_body(["phone"]) | {"epochs": 2}),  # steps and epochs
        ("/v1/jobs", job_body(["phone"]) | {"devices": ["phone", "phone"]}),
        ("/v1/jobs", job_body(["phone"]) | {"unknown_field": 1}),
        ("/v1/jobs", {"name": "j"}),
        ("/v1/devices", {"name": "../etc/passwd"}),
        ("/v1/devices", {"name": ""}),
    ],
)
def test_validation_errors_are_422_with_detail(client: TestClient, path: str, body: dict[str, Any]) -> None:
    detail = assert_status(client.post(path, json=body, headers=OPERATOR), 422)["detail"]
    assert isinstance(detail, list) and detail and all("msg" in d for d in detail)


@pytest.mark.parametrize(
    "field, value",
    [
        (("optimizer", "lr"), True),  # lax pydantic would read true as 1.0
        (("device_layers",), "2"),
        (("batch_size",), 16.5),
        (("lora", "r"), False),
        (("steps",), True),
    ],
)
def test_numbers_must_be_json_numbers(client: TestClient, field: tuple[str, ...], value: Any) -> None:
    body = job_body(["phone"])
    target = body
    for key in field[:-1]:
        target = target.setdefault(key, {})
    target[field[-1]] = value
    detail = assert_status(client.post("/v1/jobs", json=body, headers=OPERATOR), 422)["detail"]
    assert [d["loc"][1:] for d in detail] == [list(field)], detail
    assert assert_status(client.get("/v1/jobs", headers=OPERATOR), 200) == []  # nothing stored


def test_unknown_job_is_404(client: TestClient) -> None:
    job_id = uuid.uuid4().hex
    for method, path in [
        ("GET", f"/v1/jobs/{job_id}"),
        ("POST", f"/v1/jobs/{job_id}/cancel"),
        ("GET", f"/v1/jobs/{job_id}/metrics"),
        ("GET", f"/v1/jobs/{job_id}/adapters/phone"),
    ]:
        assert "no job" in assert_status(client.request(method, path, headers=OPERATOR), 404)["detail"]


def test_job_with_unknown_device_is_404_and_duplicate_device_409(client: TestClient) -> None:
    detail = assert_status(client.post("/v1/jobs", json=job_body(["ghost"]), headers=OPERATOR), 404)["detail"]
    assert "ghost" in detail
    add_device(client, "phone")
    assert_status(client.post("/v1/devices", json={"name": "phone"}, headers=OPERATOR), 409)


def test_cancel_over_rest_and_twice_is_409(client: TestClient) -> None:
    add_device(client, "phone")
    job = create_job(client, ["phone"])
    cancelled = assert_status(client.post(f"/v1/jobs/{job['id']}/cancel", headers=OPERATOR), 200)
    assert cancelled["state"] == "cancelled" and cancelled["sessions"][0]["state"] == "cancelled"
    assert_status(client.post(f"/v1/jobs/{job['id']}/cancel", headers=OPERATOR), 409)


# --- enrollment --------------------------------------------------------------------------------------


def csr_pem(name: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def enrollment_token(client: TestClient, name: str) -> str:
    created = assert_status(client.post("/v1/devices", json={"name": name}, headers=OPERATOR), 201)
    return created["enrollment_token"]


def test_enroll_with_a_csr_gets_a_certificate_signed_by_the_ca(tmp_path: Path) -> None:
    paths = init_ca(tmp_path / "certs", ["127.0.0.1"])
    client = TestClient(create_app(control_settings(tmp_path)))
    token = enrollment_token(client, "phone")
    body = {"enrollment_token": token, "csr_pem": csr_pem("whatever-the-device-asks")}
    enrolled = assert_status(client.post("/v1/devices/enroll", json=body), 200)
    cert = x509.load_pem_x509_certificate(enrolled["certificate_pem"].encode())
    ca = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    cert.verify_directly_issued_by(ca)
    (common_name,) = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert common_name.value == "phone"  # the registered name, not what the CSR asked for
    assert enrolled["ca_pem"] == paths.ca_cert.read_text()
    assert_unauthenticated(client.post("/v1/devices/enroll", json=body))  # one-time
    listed = assert_status(client.get("/v1/devices", headers=OPERATOR), 200)
    assert [(d["name"], d["status"]) for d in listed] == [("phone", "enrolled")]


def test_a_garbage_csr_is_400_and_keeps_the_token(tmp_path: Path) -> None:
    init_ca(tmp_path / "certs", ["127.0.0.1"])
    client = TestClient(create_app(control_settings(tmp_path)))
    token = enrollment_token(client, "phone")
    garbage = {"enrollment_token": token, "csr_pem": "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n"}
    assert_status(client.post("/v1/devices/enroll", json=garbage), 400)
    assert_status(client.post("/v1/devices/enroll", json={"enrollment_token": token}), 200)


def test_a_csr_without_a_ca_is_409(client: TestClient) -> None:
    body = {"enrollment_token": enrollment_token(client, "phone"), "csr_pem": csr_pem("phone")}
    assert "CA" in assert_status(client.post("/v1/devices/enroll", json=body), 409)["detail"]


def test_an_unknown_enrollment_token_is_401(client: TestClient) -> None:
    assert_unauthenticated(client.post("/v1/devices/enroll", json={"enrollment_token": "sft_not-a-token"}))


# --- adapters ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "upload, why",
    [
        (b"PK\x03\x04 a zip, not a tar.gz", "gzip"),
        (b"\x1f\x8b\x08\x00 truncated gzip", "readable"),
        (tar_gz({"../adapter_config.json": b"{}", "adapter_model.safetensors": b""}), "top-level"),
        (tar_gz({"/etc/adapter_config.json": b"{}", "adapter_model.safetensors": b""}), "top-level"),
        (tar_gz({"sub/adapter_config.json": b"{}", "adapter_model.safetensors": b""}), "top-level"),
        (tar_gz({"adapter_config.json": b"{}"}), "lacks"),
        (b"", "empty"),
    ],
    ids=["not-gzip", "bad-gzip", "traversal", "absolute", "nested", "missing-file", "empty"],
)
def test_bad_adapter_uploads_are_400(client: TestClient, upload: bytes, why: str) -> None:
    credential, assignment, _ = running_session(client)
    response = client.post(
        f"/v1/sessions/{assignment['session_id']}/complete", content=upload, headers=bearer(credential) | GZIP
    )
    assert why in assert_status(response, 400)["detail"]


def test_oversized_adapter_upload_is_413(tmp_path: Path) -> None:
    client = TestClient(create_app(control_settings(tmp_path, max_adapter_bytes=1024)))
    credential, assignment, _ = running_session(client)
    upload = b"\x1f\x8b" + b"\0" * 4096
    response = client.post(
        f"/v1/sessions/{assignment['session_id']}/complete", content=upload, headers=bearer(credential) | GZIP
    )
    assert "exceeds the 1024-byte limit" in assert_status(response, 413)["detail"]


def test_a_valid_adapter_round_trips_and_the_job_succeeds(client: TestClient) -> None:
    credential, assignment, _ = running_session(client)
    job_id, upload = assignment["job_id"], adapter_archive()
    assert_status(client.get(f"/v1/jobs/{job_id}/adapters/phone", headers=OPERATOR), 409)  # not yet
    response = client.post(
        f"/v1/sessions/{assignment['session_id']}/complete", content=upload, headers=bearer(credential) | GZIP
    )
    assert_status(response, 204)
    download = client.get(f"/v1/jobs/{job_id}/adapters/phone", headers=OPERATOR)
    assert download.status_code == 200 and download.content == upload
    assert download.headers["content-type"] == "application/gzip"
    job = assert_status(client.get(f"/v1/jobs/{job_id}", headers=OPERATOR), 200)
    assert job["state"] == "succeeded" and job["sessions"][0]["has_adapter"]
    assert_status(client.get(f"/v1/jobs/{job_id}/adapters/tablet", headers=OPERATOR), 404)


def test_a_failed_session_fails_the_job_visibly(client: TestClient) -> None:
    credential, assignment, _ = running_session(client)
    sid = assignment["session_id"]
    assert_status(
        client.post(f"/v1/sessions/{sid}/fail", json={"reason": "CUDA OOM"}, headers=bearer(credential)), 204
    )
    job = assert_status(client.get(f"/v1/jobs/{assignment['job_id']}", headers=OPERATOR), 200)
    assert job["state"] == "failed" and "CUDA OOM" in job["reason"]


def test_metrics_reported_by_the_device_come_back_in_order(client: TestClient) -> None:
    credential, assignment, _ = running_session(client)
    points = [{"step": 2, "loss": 0.4, "examples_per_second": 30.0}, {"step": 1, "loss": 0.8}]
    url = f"/v1/sessions/{assignment['session_id']}/metrics"
    assert_status(client.post(url, json={"points": points}, headers=bearer(credential)), 204)
    curve = assert_status(client.get(f"/v1/jobs/{assignment['job_id']}/metrics", headers=OPERATOR), 200)
    (session,) = curve["sessions"]
    assert session["device"] == "phone" and [p["step"] for p in session["points"]] == [1, 2]
    nan = {"points": [{"step": 3, "loss": "NaN"}]}
    assert_status(client.post(url, json=nan, headers=bearer(credential)), 422)


# --- assignments and scheduling ----------------------------------------------------------------------


def test_next_assignment_is_204_until_placed_then_carries_a_valid_token(client: TestClient) -> None:
    credential = bearer(add_device(client, "phone"))
    idle = client.get("/v1/assignments/next", headers=credential)
    assert idle.status_code == 204 and int(idle.headers["Retry-After"]) > 0 and not idle.content
    job = create_job(client, ["phone"])
    assert client.get("/v1/assignments/next", headers=credential).status_code == 204  # no edge yet
    edge = register_edge(client, "edge-a")  # registering places what waits
    assignment = assert_status(client.get("/v1/assignments/next", headers=credential), 200)
    issuer = load_public_key(edge["token_issuer_public_key"].encode())
    claims = verify_token(assignment["token"], [issuer])
    assert (claims.session, claims.device, claims.model, claims.edge, claims.job) == (
        assignment["session_id"],
        "phone",
        MODEL,
        edge["id"],
        job["id"],
    )
    assert assignment["edge_address"] == "127.0.0.1:5006" and assignment["spec"]["model"] == MODEL
    listed = assert_status(client.get(f"/v1/jobs/{job['id']}", headers=OPERATOR), 200)
    assert listed["state"] == "running" and listed["sessions"][0]["state"] == "running"


def test_a_job_with_no_edge_waits_with_a_visible_reason(client: TestClient) -> None:
    add_device(client, "phone")
    job = create_job(client, ["phone"], model="llama-7b")
    control(client).schedule_once()
    seen = assert_status(client.get(f"/v1/jobs/{job['id']}", headers=OPERATOR), 200)
    assert seen["state"] == "pending"
    assert "no healthy edge" in seen["reason"] and "llama-7b" in seen["reason"]
    assert seen["sessions"][0]["reason"] == seen["reason"]
    register_edge(client, "edge-a", max_sessions=1)  # serves tiny-bert only
    seen = assert_status(client.get(f"/v1/jobs/{job['id']}", headers=OPERATOR), 200)
    assert "serves model 'llama-7b'" in seen["reason"]
    listed = assert_status(client.get("/v1/jobs", params={"state": "pending"}, headers=OPERATOR), 200)
    assert [j["id"] for j in listed] == [job["id"]]


def test_an_edge_that_stops_heartbeating_loses_its_sessions_to_another(client: TestClient) -> None:
    add_device(client, "phone")
    first = register_edge(client, "edge-a")
    job = create_job(client, ["phone"])
    assert job["sessions"][0]["edge_id"] == first["id"]
    second = register_edge(client, "edge-b")
    with control(client).store.tx() as s:  # edge-a went quiet long ago
        row = s.get(Edge, first["id"])
        assert row is not None
        row.last_heartbeat_at = utcnow() - timedelta(hours=1)
    control(client).started -= 3600  # this control plane has been up long enough to judge
    control(client).schedule_once()
    moved = assert_status(client.get(f"/v1/jobs/{job['id']}", headers=OPERATOR), 200)["sessions"][0]
    assert (moved["edge_id"], moved["attempts"]) == (second["id"], 2)
    edges = assert_status(client.get("/v1/edges", headers=OPERATOR), 200)
    assert {e["name"]: e["status"] for e in edges} == {"edge-a": "down", "edge-b": "up"}


def test_a_restarted_control_plane_gives_edges_a_timeout_to_check_in(client: TestClient) -> None:
    add_device(client, "phone")
    edge = register_edge(client, "edge-a")
    job = create_job(client, ["phone"])
    with control(client).store.tx() as s:  # its last heartbeat reached the previous process
        row = s.get(Edge, edge["id"])
        assert row is not None
        row.last_heartbeat_at = utcnow() - timedelta(hours=1)
    control(client).schedule_once()  # just started: the stored heartbeat says nothing yet
    kept = assert_status(client.get(f"/v1/jobs/{job['id']}", headers=OPERATOR), 200)["sessions"][0]
    assert (kept["edge_id"], kept["attempts"]) == (edge["id"], 1)
    control(client).started -= control(client).settings.heartbeat_timeout  # still silent a timeout on
    control(client).schedule_once()
    edges = assert_status(client.get("/v1/edges", headers=OPERATOR), 200)
    assert {e["name"]: e["status"] for e in edges} == {"edge-a": "down"}


# --- health and metrics ------------------------------------------------------------------------------


@pytest.fixture
def live_client(tmp_path: Path) -> Iterator[TestClient]:
    """With the lifespan: the scheduler thread runs, as under uvicorn."""
    with TestClient(create_app(control_settings(tmp_path, schedule_interval=0.05))) as client:
        yield client


def test_healthz_and_prometheus_metrics(live_client: TestClient) -> None:
    assert assert_status(live_client.get("/healthz"), 200) == {"status": "ok"}
    add_device(live_client, "phone")
    create_job(live_client, ["phone"])
    control(live_client).schedule_once()
    text = live_client.get("/metrics").text
    assert 'splitft_jobs{state="pending"} 1.0' in text
    assert "splitft_http_request_seconds_bucket" in text
    assert 'route="/v1/jobs"' in text and 'status="201"' in text


# --- hostile input, on both databases ----------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db_client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestClient]:
    """The app on SQLite, then on a scratch PostgreSQL database: the two fail differently on odd input."""
    yield from app_on(request.param, tmp_path)


def raw_json(body: dict[str, Any], literal: str) -> str:
    """`body` as JSON with the value "LITERAL" spelled `literal` (NaN, 1e400: httpx won't send those)."""
    text = json.dumps(body)
    assert text.count('"LITERAL"') == 1
    return text.replace('"LITERAL"', literal)


def refuse_constant(name: str) -> Any:
    raise AssertionError(f"{name} is not JSON")


def hostile_requests(edge: dict[str, Any], session_id: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, url, request kwargs): NUL bytes, non-finite floats and integers no column holds."""
    job = job_body(["phone"])
    infinite_alpha = job | {"lora": job["lora"] | {"lora_alpha": "LITERAL"}}
    beat = f"/v1/edges/{edge['id']}/heartbeat"
    metrics = f"/v1/sessions/{session_id}/metrics"
    return [
        ("GET", "/v1/jobs/a%00b", {}),
        ("POST", "/v1/jobs/a%00b/cancel", {}),
        ("GET", "/v1/jobs/a%00b/metrics", {}),
        ("GET", "/v1/jobs/a%00b/adapters/a%00b", {}),
        ("GET", "/v1/jobs?state=a%00b", {}),
        ("POST", "/v1/sessions/a%00b/metrics", {"json": {"points": [{"step": 1, "loss": 1.0}]}}),
        ("POST", f"/v1/sessions/{session_id}/fail", {"json": {"reason": "out of\x00memory"}}),
        ("POST", "/v1/edges/a%00b/heartbeat", {"json": {}}),
        ("POST", "/v1/edges/register", {"json": {"name": "e2", "address": "h\x00:1", "models": ["m"]}}),
        ("POST", beat, {"json": {"active_sessions": 2**31}}),
        ("POST", beat, {"json": {"capacity": {"memory_free_bytes": 2**63}}}),
        ("POST", metrics, {"json": {"points": [{"step": 2**31, "loss": 1.0}]}}),
        ("POST", metrics, {"json": {"points": [{"step": 1, "loss": 1.0, "bytes_sent": 2**63}]}}),
        # Python's json reads NaN, Infinity and 1e400 (as inf); the 422 must not echo them back raw.
        ("POST", metrics, {"content": raw_json({"points": [{"step": 1, "loss": "LITERAL"}]}, "NaN")}),
        ("POST", "/v1/jobs", {"content": raw_json(infinite_alpha, "Infinity")}),
        ("POST", "/v1/jobs", {"content": raw_json(job | {"clip_grad_norm": "LITERAL"}, "1e400")}),
        ("POST", "/v1/devices/enroll", {"json": {"enrollment_token": "sft_\x00\x00\x00\x00\x00"}}),
        ("POST", "/v1/devices/enroll", {"json": {"enrollment_token": "sft_abcdefgh", "csr_pem": "\x00"}}),
    ]


def test_hostile_input_is_a_4xx_on_every_database(any_db_client: TestClient) -> None:
    client = any_db_client
    credential, assignment, edge = running_session(client)
    auth = {"/v1/sessions": bearer(credential), "/v1/edges/register": bearer(EDGE_SECRET)}
    auth["/v1/edges/"] = bearer(edge["credential"])
    for method, url, kwargs in hostile_requests(edge, assignment["session_id"]):
        headers = next((h for prefix, h in auth.items() if url.startswith(prefix)), OPERATOR)
        if "content" in kwargs:
            headers = headers | {"Content-Type": "application/json"}
        response = client.request(method, url, **kwargs, headers=headers)
        assert 400 <= response.status_code < 500, (method, url, response.status_code, response.text)
        json.loads(response.text, parse_constant=refuse_constant)  # and the error itself is strict JSON
    # The spec is a JSON column, where NUL travels escaped (PostgreSQL json keeps \u0000): stored as given.
    body = job_body(["phone"], model="odd\x00model")
    created = assert_status(client.post("/v1/jobs", json=body, headers=OPERATOR), 201)
    assert created["spec"]["model"] == "odd\x00model"
    assert_status(client.get("/v1/jobs", headers=OPERATOR), 200)


def test_jobs_take_a_method_and_refuse_mixed_or_missing_specs(client: TestClient) -> None:
    add_device(client, "dev-m")
    job = create_job(
        client,
        ["dev-m"],
        method="taskedge",
        lora=None,
        taskedge={"budget_fraction": 0.002, "n_m": [2, 4], "calibration_batches": 2},
    )
    assert job["spec"]["method"] == "taskedge" and job["spec"]["taskedge"]["n_m"] == [2, 4]
    tiny = create_job(
        client,
        ["dev-m"],
        method="tinytrain",
        lora=None,
        tinytrain={"memory_budget_bytes": 1e6, "channel_ratios": [1, 0.5]},
    )
    assert tiny["spec"]["tinytrain"]["memory_budget_bytes"] == 1e6
    assert tiny["spec"]["tinytrain"]["compute_budget_macs"] is None  # no limit
    per_direction = create_job(client, ["dev-m"], codec={"gradients": "topk:0.010", "activations": "int8"})
    assert per_direction["spec"]["codec"] == "activations=int8,gradients=topk:0.01"  # canonical
    base = {"name": "j", "model": "m", "device_layers": 1, "steps": 1, "devices": ["dev-m"]}
    lora_base = {**base, "lora": {"target_modules": ["q"]}}
    assert client.post("/v1/jobs", json=lora_base, headers=bearer(OPERATOR_KEY)).status_code == 201
    for bad in (
        {**base},  # method lora (the default) without a lora spec
        {**base, "method": "taskedge", "lora": {"target_modules": ["q"]}},  # both
        {**base, "method": "tinytrain", "lora": {"target_modules": ["q"]}},
        {**base, "method": "headonly"},  # not a method jobs can run
        {**base, "method": "taskedge", "taskedge": {"budget_fraction": 0}},
        {**base, "method": "taskedge", "tinytrain": {}},  # the other method's spec
        {**base, "method": "tinytrain", "tinytrain": {"memory_budget_bytes": 0}},
        {**base, "method": "tinytrain", "tinytrain": {"channel_ratios": [1.5]}},
        {**base, "method": "tinytrain", "tinytrain": {"channel_ratios": [0.5, 0.5]}},
        {**base, "method": "tinytrain", "tinytrain": {"channel_ratios": []}},
        {**lora_base, "codec": "topk:0.01"},  # gradient-only codec for activations too
        {**lora_base, "codec": {"activations": "int8", "weights": "raw"}},
        {**lora_base, "codec": "int3"},
    ):
        response = client.post("/v1/jobs", json=bad, headers=bearer(OPERATOR_KEY))
        assert response.status_code == 422, (bad, response.text)
