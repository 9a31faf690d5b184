"""`splitft jobs|devices|edges` against a real control plane process (HTTPS, SQLite).

The commands run through `splitft.cli.main` in this process (one subprocess checks the installed
command end to end); the control plane is `splitft control serve` in its own process. The device's
side (assignment, metrics, adapter upload) is driven through its REST routes.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from splitft.cli import main
from splitft.cli.commands.operator_client import Connection, OperatorClient
from splitft.cli.commands.watch import MetricsFollower, _watch_bars
from tests.support.control_fixtures import MODEL, OPERATOR_KEY
from tests.support.operator_fixtures import RealControl, real_control

pytestmark = [pytest.mark.e2e]

JOB_YAML = """\
# a job file as an operator writes it
name: cli-job
model: {model}
device_layers: 1
lora: {{r: 4, target_modules: [query, value]}}
optimizer: {{name: AdamW, lr: 1e-3}}
steps: 3
devices: [{device}]
"""


@pytest.fixture(scope="module")
def control(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealControl]:
    with real_control(tmp_path_factory.mktemp("operator-cli")) as running:
        running.register_edge("edge-a")
        yield running


@pytest.fixture
def env(control: RealControl, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """The connection in the environment (and no config file from the user's home)."""
    values = {
        "SPLITFT_CONTROL_URL": control.url,
        "SPLITFT_OPERATOR_KEY": OPERATOR_KEY,
        "SPLITFT_CONTROL_CA": str(control.ca),
    }
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("SPLITFT_OPERATOR_CONFIG", raising=False)
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_devices_and_edges(
    control: RealControl, env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "devices", "create", "tablet-1")
    assert code == 0 and "enrollment token (shown once)" in out
    token = out.strip().splitlines()[-1]
    assert len(token.split(".")[1]) == 64  # the CA fingerprint the token pins
    code, out, _ = run(capsys, "devices", "list")
    assert code == 0 and "tablet-1" in out and "pending" in out
    code, out, _ = run(capsys, "devices", "disable", "tablet-1")  # by name
    assert code == 0 and "tablet-1" in out and "disabled" in out
    code, out, _ = run(capsys, "edges", "list")
    assert code == 0 and "edge-a" in out and "up" in out and "3.0 GiB" in out and MODEL in out


def test_job_create_watch_adapter(
    control: RealControl, env: dict[str, str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    credential = control.enrolled_device("phone-1")
    job_file = tmp_path / "job.yaml"
    job_file.write_text(JOB_YAML.format(model=MODEL, device="phone-1"))
    code, out, err = run(capsys, "jobs", "create", str(job_file), "--json")
    assert code == 0, err
    job = json.loads(out)
    assert job["spec"]["optimizer"]["lr"] == 0.001 and job["state"] == "running"  # placed on edge-a
    code, out, _ = run(capsys, "jobs", "list")
    assert code == 0 and job["id"] in out and "cli-job" in out
    session = control.next_session(credential)

    def device() -> None:  # the device's side while the operator watches
        control.report(credential, session, [(1, 1.25), (2, 0.75)])
        control.report(credential, session, [(3, 0.5)])
        control.complete(credential, session)

    worker = threading.Timer(0.5, device)
    worker.start()
    code, out, _ = run(capsys, "jobs", "watch", job["id"], "--interval", "0.2")
    worker.join()
    assert code == 0, out
    assert "phone-1: step 3/3 loss 0.5000 23.0 ex/s" in out
    assert out.strip().endswith(f"job {job['id']} succeeded")
    code, out, _ = run(capsys, "jobs", "show", job["id"])
    assert code == 0 and session in out and "succeeded" in out
    dest = tmp_path / "adapter.tar.gz"
    code, out, _ = run(capsys, "jobs", "adapter", job["id"], "--device", "phone-1", "--out", str(dest))
    assert (
        code == 0
        and dest.read_bytes() == control.call("GET", f"/v1/jobs/{job['id']}/adapters/phone-1").content
    )
    code, _, err = run(capsys, "jobs", "adapter", job["id"], "--device", "phone-1", "--out", str(dest))
    assert code == 2 and "refusing to overwrite" in err


def test_cancel_and_server_reasons(
    control: RealControl, env: dict[str, str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    control.enrolled_device("phone-2")
    job_file = tmp_path / "job.json"
    lora = {"r": 4, "target_modules": ["query"]}
    body = {"name": "c", "model": MODEL, "device_layers": 1, "steps": 5, "devices": ["phone-2"], "lora": lora}
    job_file.write_text(json.dumps(body))
    code, out, err = run(capsys, "jobs", "create", str(job_file))
    assert code == 0, err
    job_id = out.split()[1]
    code, out, _ = run(capsys, "jobs", "cancel", job_id)
    assert code == 0 and f"job {job_id} cancelled" in out
    code, _, err = run(capsys, "jobs", "cancel", job_id)  # the server's 409, its reason quoted
    assert code == 2 and f"POST /v1/jobs/{job_id}/cancel -> 409" in err
    code, out, _ = run(capsys, "jobs", "watch", job_id, "--plain")
    assert code == 1 and "phone-2: step 0/5 loss - (cancelled)" in out
    assert out.strip().endswith(f"job {job_id} cancelled: cancelled by an operator"), out
    code, _, err = run(capsys, "jobs", "show", "no-such-job")
    assert code == 2 and "404" in err and "no job 'no-such-job'" in err
    body.pop("steps")
    job_file.write_text(json.dumps(body))
    code, _, err = run(capsys, "jobs", "create", str(job_file))
    assert code == 2 and "422" in err and "give exactly one of steps or epochs" in err
    job_file.write_text("name: [unclosed")
    job_file.rename(tmp_path / "job.yaml")
    code, _, err = run(capsys, "jobs", "create", str(tmp_path / "job.yaml"))
    assert code == 2 and "is not valid YAML" in err


def test_key_url_and_config_file_refusals(
    control: RealControl, env: dict[str, str], capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("SPLITFT_OPERATOR_KEY", "not-the-operator-key-0123456789")
    code, _, err = run(capsys, "jobs", "list")
    assert code == 2 and "401" in err and "invalid or revoked operator API key" in err
    monkeypatch.delenv("SPLITFT_OPERATOR_KEY")
    code, _, err = run(capsys, "jobs", "list")
    assert code == 2 and "no operator key" in err
    code, _, err = run(capsys, "edges", "list", "--control-plane", "http://control.example:8080")
    assert code == 2 and "refusing plaintext http://control.example:8080" in err
    # The config file: url, key, a CA relative to the file; refused while others may read it.
    monkeypatch.delenv("SPLITFT_CONTROL_URL")
    monkeypatch.delenv("SPLITFT_CONTROL_CA")
    (tmp_path / "ca.pem").write_bytes(Path(env["SPLITFT_CONTROL_CA"]).read_bytes())
    config = tmp_path / "operator.yaml"
    config.write_text(f"url: {control.url}\nkey: {OPERATOR_KEY}\nca: ca.pem\n")
    config.chmod(0o644)
    code, _, err = run(capsys, "edges", "list", "--config", str(config))
    assert code == 2 and f"refusing to read operator config {config}: its mode is 0644" in err
    assert f"chmod 600 {config}" in err
    config.chmod(0o600)
    code, out, _ = run(capsys, "edges", "list", "--config", str(config))
    assert code == 0 and "edge-a" in out
    config.write_text(f"url: {control.url}\nkey: {OPERATOR_KEY}\npassword: x\n")
    code, _, err = run(capsys, "edges", "list", "--config", str(config))
    assert code == 2 and "unknown setting(s) password" in err
    key_file = tmp_path / "key"
    key_file.write_text(OPERATOR_KEY + "\n")
    key_file.chmod(0o640)
    code, _, err = run(
        capsys, "edges", "list", "--control-plane", control.url, "--operator-key-file", str(key_file)
    )
    assert code == 2 and "its mode is 0640" in err


def test_the_installed_command_exits_non_zero_with_the_reason(
    control: RealControl, env: dict[str, str]
) -> None:
    splitft = Path(sys.executable).parent / "splitft"
    result = subprocess.run(
        [str(splitft), "jobs", "show", "missing"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr == "error: GET /v1/jobs/missing -> 404: no job 'missing'\n"


def test_watch_draws_a_progress_bar_per_device_on_a_terminal(
    control: RealControl, env: dict[str, str]
) -> None:
    creds = {name: control.enrolled_device(name) for name in ("watch-1", "watch-2")}
    body = {"name": "bars", "model": MODEL, "device_layers": 1, "steps": 2, "devices": list(creds)}
    body["lora"] = {"r": 4, "target_modules": ["query"]}
    job = control.call("POST", "/v1/jobs", json=body).json()
    for i, credential in enumerate(creds.values()):
        session = control.next_session(credential)
        control.report(credential, session, [(1, 0.9), (2, 0.4 + i / 10)])
        control.complete(credential, session)
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=120)
    with OperatorClient(
        Connection(control.url, OPERATOR_KEY, Path(env["SPLITFT_CONTROL_CA"]).read_text())
    ) as client:
        job = _watch_bars(client, job, MetricsFollower(job["id"]), {}, 2, 0.1, console)
    assert job["state"] == "succeeded"
    drawn = screen.getvalue()
    assert "━" in drawn  # the bars
    for line in ("watch-1", "2/2", "loss 0.4000", "watch-2", "loss 0.5000", "22.0 ex/s", "succeeded"):
        assert line in drawn, line
