"""Screenshot the dashboard over a finished demo's database (docs/img/dashboard.png).

    python docs/scripts/dashboard_screenshot.py runs/demo/loop/data docs/img/dashboard.png

Starts `splitft control serve` on the demo's SQLite data dir (plain HTTP on loopback; a fresh
operator key is added to that database), signs in with headless Chromium (Debian's, driven by
Playwright), opens the newest job (the demo's federated one) and saves a full-page screenshot.
"""

from __future__ import annotations

import secrets
import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

from splitft.local.launch import ControlProcess

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]


def main(data_dir: str, out: str) -> None:
    key = secrets.token_urlsafe(24)
    control = ControlProcess(Path(data_dir), operator_key=key, edge_secret=secrets.token_urlsafe(24)).start()
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(control.url + "/ui")
            page.fill("#key", key)
            page.click("button[type=submit]")
            page.wait_for_selector("#jobs tbody tr")
            page.click("#jobs tbody tr >> nth=0")
            page.wait_for_selector("#loss-chart circle.point")
            page.wait_for_timeout(2500)  # one more poll: the rounds chart and table
            page.screenshot(path=out, full_page=True)
            browser.close()
    finally:
        control.stop()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
