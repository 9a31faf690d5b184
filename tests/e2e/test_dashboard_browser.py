"""The dashboard (/ui) in a real browser: Debian's headless Chromium driven by Playwright.

A real control plane process (SQLite) serves the page; jobs are created over REST, and a device's
metrics and adapter arrive through its REST routes. The test signs in with the operator key, sees
the job, its loss curve drawn from the reported points, downloads an adapter and cancels a job.
Skipped, saying why, where no Chromium is installed (`apt-get install chromium`). Playwright's own
browser downloads are not used: it drives the system's /usr/bin/chromium.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.control_fixtures import MODEL, OPERATOR_KEY, job_body
from tests.support.operator_fixtures import RealControl, real_control

pytestmark = [pytest.mark.e2e]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Chromium's own background traffic would only be refused on a closed network: turn it off.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT_ENV = "SPLITFT_DASHBOARD_SCREENSHOT"  # a path: also save a screenshot there (docs/img)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if CHROMIUM is None:
        pytest.skip(
            "no Chromium on this machine (Debian: apt-get install chromium); the dashboard test needs one"
        )
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install '.[dev]')"
    )
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def control(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealControl]:
    # Plain HTTP on loopback: the page is same-origin either way, and the browser needs no CA.
    with real_control(tmp_path_factory.mktemp("dashboard"), https=False) as running:
        running.register_edge("edge-a")
        yield running


def _job(control: RealControl, name: str, devices: list[str], steps: int) -> str:
    body = job_body(devices, name=name, steps=steps)
    return str(control.call("POST", "/v1/jobs", json=body).json()["id"])


def test_dashboard_shows_jobs_curves_downloads_and_cancels(
    control: RealControl, browser: Any, tmp_path: Path
) -> None:
    creds = {name: control.enrolled_device(name) for name in ("phone-1", "phone-2", "phone-3")}
    running = _job(control, "running-job", ["phone-1", "phone-2"], steps=5)
    sessions = {d: control.next_session(creds[d]) for d in ("phone-1", "phone-2")}
    control.report(creds["phone-1"], sessions["phone-1"], [(1, 1.4), (2, 1.1), (3, 0.9)])
    control.report(creds["phone-2"], sessions["phone-2"], [(1, 1.5), (2, 1.3)])
    done = _job(control, "done-job", ["phone-3"], steps=2)
    s3 = control.next_session(creds["phone-3"])
    control.report(creds["phone-3"], s3, [(1, 0.8), (2, 0.6)])
    archive = control.complete(creds["phone-3"], s3)

    context = browser.new_context(accept_downloads=True, viewport={"width": 1400, "height": 1100})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    response = page.goto(control.url + "/ui")
    assert response is not None and response.status == 200
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp

    page.fill("#key", "wrong-key-0123456789abcdef")
    page.click("button[type=submit]")
    page.wait_for_selector("#login-error:has-text('401: invalid or revoked operator API key')")
    errors.clear()  # the browser logs the refused request itself
    page.fill("#key", OPERATOR_KEY)
    page.click("button[type=submit]")
    page.wait_for_selector(f"#jobs tr[data-job='{running}']")
    assert page.locator(f"#jobs tr[data-job='{done}']").count() == 1
    assert page.locator("#edges tbody tr").count() == 1
    for name in creds:
        assert page.locator(f"#devices tbody tr:has-text('{name}')").count() == 1

    page.click(f"#jobs tr[data-job='{running}']")
    page.wait_for_selector("#loss-chart svg polyline")
    assert page.locator("#loss-chart polyline").count() == 2  # one curve per device
    assert page.locator("#loss-chart circle.point").count() == 5  # every reported point
    assert page.locator("#sessions tbody tr").count() == 2

    if os.environ.get(SCREENSHOT_ENV):
        page.screenshot(path=os.environ[SCREENSHOT_ENV], full_page=True)

    page.on("dialog", lambda dialog: dialog.accept())
    page.click("#cancel")
    page.wait_for_selector("#job-state:has-text('cancelled')")
    assert control.call("GET", f"/v1/jobs/{running}").json()["state"] == "cancelled"

    page.click(f"#jobs tr[data-job='{done}']")
    page.wait_for_selector("#sessions button.download")
    with page.expect_download() as info:
        page.click("#sessions button.download")
    saved = tmp_path / "downloaded.tar.gz"
    info.value.save_as(saved)
    assert saved.read_bytes() == archive

    # The key never left the page's memory: not in the DOM, the URL, a cookie or storage.
    assert OPERATOR_KEY not in page.content() and OPERATOR_KEY not in page.url
    assert context.cookies() == []
    assert page.evaluate("localStorage.length + sessionStorage.length") == 0
    assert errors == []  # no script error, no CSP violation
    context.close()


def test_ui_serves_only_its_files_and_state_changes_need_the_header(control: RealControl) -> None:
    for name in ("app.js", "chart.js", "app.css"):
        response = httpx.get(f"{control.url}/ui/{name}")
        assert (
            response.status_code == 200
            and "default-src 'none'" in response.headers["content-security-policy"]
        )
    assert OPERATOR_KEY not in httpx.get(f"{control.url}/ui").text
    for name in ("index.html/../../app.py", "..%2Fapp.py", "settings.py"):
        assert httpx.get(f"{control.url}/ui/{name}").status_code == 404
    control.enrolled_device("phone-9")
    job = _job(control, "x", ["phone-9"], steps=2)
    # A cross-site form can send cookies but never this header: without it, nothing changes.
    refused = httpx.post(f"{control.url}/v1/jobs/{job}/cancel", cookies={"session": "x"})
    assert refused.status_code == 401
    assert control.call("GET", f"/v1/jobs/{job}").json()["state"] != "cancelled"
    assert MODEL in control.call("GET", f"/v1/jobs/{job}").text
