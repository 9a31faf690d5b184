"""Hostile input to the REST control plane (security review 2026-11-29: M2, M8, L3, L10):
archive bombs and odd archives, metrics label cardinality, metrics after a session ended."""

from __future__ import annotations

import gzip
import io
import tarfile
import zlib
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from splitft.errors import InvalidArgument, PayloadTooLarge
from splitft_control.app import create_app
from splitft_control.archive import ArchiveLimits, check_adapter_archive
from tests.support.control_fixtures import (
    OPERATOR_KEY,
    adapter_archive,
    add_device,
    bearer,
    control_settings,
    create_job,
    register_edge,
    tar_gz,
)

OPERATOR = bearer(OPERATOR_KEY)
GZIP = {"Content-Type": "application/gzip"}
LORA = {"adapter_config.json": b'{"r": 4}', "adapter_model.safetensors": b"\0" * 64}


def zero_bomb(member_bytes: int, names: tuple[str, ...] = tuple(LORA)) -> bytes:
    """A .tar.gz whose members are `member_bytes` of zeros each: a few KiB that gunzip to a lot."""
    out = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    parts = []
    zeros = bytes(1024 * 1024)
    for name in names:
        info = tarfile.TarInfo(name)
        info.size = member_bytes
        parts.append(out.compress(info.tobuf(tarfile.GNU_FORMAT)))
        for _ in range(member_bytes // len(zeros)):
            parts.append(out.compress(zeros))
        parts.append(out.compress(bytes(member_bytes % len(zeros))))
        parts.append(out.compress(bytes(-member_bytes % 512)))
    parts.append(out.compress(bytes(1024)) + out.flush())
    return b"".join(parts)


def raw_tar_gz(members: list[tarfile.TarInfo], data: bytes = b"") -> bytes:
    """A .tar.gz built header by header, for member kinds tarfile would not write on its own."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for member in members:
            tar.addfile(member, io.BytesIO(data) if member.isfile() or member.issparse() else None)
    return gzip.compress(buffer.getvalue())


# --- the archive check on its own -------------------------------------------------------------------


def test_a_gzip_bomb_is_refused_at_the_unpacked_limit() -> None:
    bomb = zero_bomb(64 * 1024 * 1024)  # two members of 64 MiB: about 130 KiB on the wire
    assert len(bomb) < 1024 * 1024
    with pytest.raises(PayloadTooLarge, match=r"unpacks to more than 8388608 bytes"):
        check_adapter_archive(bomb, ArchiveLimits(max_unpacked_bytes=8 * 1024 * 1024))


def test_an_archive_of_many_members_is_refused_at_the_member_limit() -> None:
    many = tar_gz({**LORA, **{f"f{i}": b"" for i in range(1000)}})
    with pytest.raises(PayloadTooLarge, match="more than 8 members"):
        check_adapter_archive(many)


@pytest.mark.parametrize(
    ("files", "match"),
    [
        ({**LORA, ".hidden": b"x"}, r"files no adapter has: \['.hidden'\]"),
        ({**LORA, "README.md": b"x"}, r"files no adapter has: \['README.md'\]"),
        ({"adapter_config.json": b"{}"}, "lacks the files of an adapter"),
    ],
    ids=["dotfile", "readme", "half"],
)
def test_only_the_exact_files_of_an_adapter_are_accepted(files: dict[str, bytes], match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        check_adapter_archive(tar_gz(files))


def test_both_adapter_layouts_pass() -> None:
    check_adapter_archive(adapter_archive())
    sparse = {"sparse_config.json": b"{}", "sparse_deltas.safetensors": b"\0" * 8}
    check_adapter_archive(tar_gz(sparse))
    check_adapter_archive(tar_gz({**sparse, "head.safetensors": b"\0" * 8}))
    check_adapter_archive(tar_gz({"./" + name: data for name, data in LORA.items()}))


def test_a_duplicate_member_is_refused() -> None:
    members = []
    for name in ("adapter_config.json", "adapter_model.safetensors", "adapter_config.json"):
        info = tarfile.TarInfo(name)
        members.append(info)
    with pytest.raises(InvalidArgument, match="holds 'adapter_config.json' twice"):
        check_adapter_archive(raw_tar_gz(members))


@pytest.mark.parametrize("kind", [tarfile.GNUTYPE_SPARSE, tarfile.XHDTYPE, tarfile.GNUTYPE_LONGNAME])
def test_sparse_pax_and_long_name_members_are_refused(kind: bytes) -> None:
    odd = tarfile.TarInfo("adapter_model.safetensors")
    odd.type = kind
    with pytest.raises(InvalidArgument, match="only plain files"):
        check_adapter_archive(raw_tar_gz([tarfile.TarInfo("adapter_config.json"), odd]))


def test_a_long_name_gets_no_pax_header_through() -> None:
    """tarfile writes a pax header for a name over 100 characters: refused before it is read."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("a" * 300)
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(InvalidArgument, match="only plain files"):
        check_adapter_archive(gzip.compress(buffer.getvalue()))


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (gzip.compress(b"\0" * 100), "truncated archive"),
        (adapter_archive() + b"junk", "after the end of its gzip stream"),
        (adapter_archive()[:-12], "truncated gzip stream"),
        (b"\x1f\x8b" + b"\xff" * 64, "not a readable tar.gz"),
    ],
    ids=["short-tar", "trailing", "cut", "garbage"],
)
def test_broken_archives_are_400(data: bytes, match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        check_adapter_archive(data)


# --- the upload route -------------------------------------------------------------------------------


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    return TestClient(create_app(control_settings(tmp_path, max_adapter_unpacked_bytes=4 * 1024 * 1024)))


def _running(client: TestClient, device: str = "phone") -> tuple[str, dict]:
    register_edge(client, f"edge-{device}")
    credential = add_device(client, device)
    create_job(client, [device], name=f"job-{device}")
    assignment = client.get("/v1/assignments/next", headers=bearer(credential))
    assert assignment.status_code == 200, assignment.text
    return credential, assignment.json()


def test_a_bomb_uploaded_to_an_open_session_is_413_with_the_limit(client: TestClient) -> None:
    credential, assignment = _running(client)
    url = f"/v1/sessions/{assignment['session_id']}/complete"
    response = client.post(url, content=zero_bomb(16 * 1024 * 1024), headers=bearer(credential) | GZIP)
    assert response.status_code == 413, response.text
    assert response.json()["detail"] == "adapter archive unpacks to more than 4194304 bytes"
    job = client.get(f"/v1/jobs/{assignment['job_id']}", headers=OPERATOR).json()
    assert job["sessions"][0]["state"] == "running"  # nothing was stored


def test_an_upload_to_a_session_not_ours_is_refused_before_its_archive_is_read(client: TestClient) -> None:
    """Garbage that the archive check would call 400 gets the session's answer first."""
    credential, assignment = _running(client, "phone")
    other, _ = _running(client, "tablet")
    garbage = b"\x1f\x8b" + b"\xff" * 64
    url = f"/v1/sessions/{assignment['session_id']}/complete"
    foreign = client.post(url, content=garbage, headers=bearer(other) | GZIP)
    assert foreign.status_code == 403 and "another device" in foreign.json()["detail"]
    missing = client.post("/v1/sessions/nope/complete", content=garbage, headers=bearer(credential) | GZIP)
    assert missing.status_code == 404 and missing.json()["detail"] == "no session 'nope'"
    assert client.post(url, content=adapter_archive(), headers=bearer(credential) | GZIP).status_code == 204
    done = client.post(url, content=garbage, headers=bearer(credential) | GZIP)
    assert done.status_code == 409 and done.json()["detail"] == "session is succeeded, not running"


# --- metrics ------------------------------------------------------------------------------------------


def test_metrics_for_a_finished_session_are_409(client: TestClient) -> None:
    credential, assignment = _running(client)
    url = f"/v1/sessions/{assignment['session_id']}/metrics"
    assert (
        client.post(url, json={"points": [{"step": 1, "loss": 1.0}]}, headers=bearer(credential)).status_code
        == 204
    )
    done = f"/v1/sessions/{assignment['session_id']}/complete"
    assert client.post(done, content=adapter_archive(), headers=bearer(credential) | GZIP).status_code == 204
    late = client.post(url, json={"points": [{"step": 2, "loss": 0.5}]}, headers=bearer(credential))
    assert late.status_code == 409, late.text
    assert "metrics are accepted only while it is assigned or running" in late.json()["detail"]


def test_metric_points_per_session_are_capped(tmp_path: Path) -> None:
    client = TestClient(create_app(control_settings(tmp_path, max_metric_points_per_session=5)))
    credential, assignment = _running(client)
    url = f"/v1/sessions/{assignment['session_id']}/metrics"
    points = [{"step": i, "loss": 1.0} for i in range(4)]
    assert client.post(url, json={"points": points}, headers=bearer(credential)).status_code == 204
    more = [{"step": 4 + i, "loss": 1.0} for i in range(2)]
    over = client.post(url, json={"points": more}, headers=bearer(credential))
    assert over.status_code == 429, over.text
    assert over.json()["detail"].startswith("session has 4 metric points; 2 more would pass its limit of 5")
    assert client.post(url, json={"points": points}, headers=bearer(credential)).status_code == 204  # repeats
    assert client.post(url, json={"points": more[:1]}, headers=bearer(credential)).status_code == 204


def test_job_metrics_are_paginated_with_a_cursor(client: TestClient) -> None:
    credential, assignment = _running(client)
    url = f"/v1/sessions/{assignment['session_id']}/metrics"
    for start in (0, 5):
        points = [{"step": start + i, "loss": 1.0} for i in range(5)]
        assert client.post(url, json={"points": points}, headers=bearer(credential)).status_code == 204
    base = f"/v1/jobs/{assignment['job_id']}/metrics"
    steps, after, pages = [], 0, 0
    while after is not None:
        page = client.get(base, params={"limit": 4, "after": after}, headers=OPERATOR).json()
        steps += [p["step"] for p in page["sessions"][0]["points"]]
        after, pages = page["next_after"], pages + 1
        assert pages <= 4
    assert steps == list(range(10)) and pages == 3
    whole = client.get(base, headers=OPERATOR).json()  # default page (1000) holds them all
    assert len(whole["sessions"][0]["points"]) == 10 and whole["next_after"] is None
    assert client.get(base, params={"limit": 10_001}, headers=OPERATOR).status_code == 422
    assert client.get(base, params={"limit": 0}, headers=OPERATOR).status_code == 422


# --- Prometheus label cardinality ---------------------------------------------------------------------


def test_odd_methods_and_paths_do_not_grow_metric_labels(client: TestClient) -> None:
    for i in range(30):
        client.request(f"X{i}FOO", "/healthz")
        client.get(f"/no/such/path/{i}")
    text = client.get("/metrics").text
    assert "X0FOO" not in text and "/no/such/path" not in text
    assert 'method="OTHER",route="/healthz"' in text
    assert 'route="unmatched"' in text
    series = {line.split("{", 1)[1].split("}")[0] for line in text.splitlines() if "_count{" in line}
    assert len(series) <= 4, series
