"""`splitft jobs watch`: a job's progress per device, live, from the metrics its devices report.

Progress bars (rich) on a terminal, one line per new report otherwise (`--plain`, logs, pipes).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

FINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})
METRICS_PAGE = 1000


class Client(Protocol):
    def get(self, path: str, **params: Any) -> Any: ...


def total_steps(spec: dict[str, Any]) -> int | None:
    """A session's optimizer steps when the spec fixes them (epochs depend on the device's data)."""
    if spec.get("steps"):
        return int(spec["steps"])
    federated = spec.get("federated") or {}
    return int(federated["local_steps"]) if federated.get("local_steps") else None


class MetricsFollower:
    """The job's metric points not seen yet, page by page.

    The server's cursor (`next_after`) is only given for a full page, so the last partial page is
    asked for again at the next poll: points already seen (session, step) are skipped.
    """

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.after = 0
        self.seen: set[tuple[str, int]] = set()

    def poll(self, client: Client) -> list[tuple[str, str, dict[str, Any]]]:
        """New (session id, device, point) in storage order."""
        found = []
        while True:
            page = client.get(f"/v1/jobs/{self.job_id}/metrics", after=self.after, limit=METRICS_PAGE)
            for session in page["sessions"]:
                for point in session["points"]:
                    key = (session["session_id"], int(point["step"]))
                    if key not in self.seen:
                        self.seen.add(key)
                        found.append((session["session_id"], session["device"], point))
            if page["next_after"] is None:
                return found
            self.after = int(page["next_after"])


@dataclass
class DeviceRow:
    """What one device shows: its latest session's state and report."""

    session_id: str = ""
    round: int | None = None
    state: str = "waiting"
    step: int = 0
    loss: float | None = None
    rate: float | None = None

    def describe(self, device: str) -> str:
        return device if self.round is None else f"{device} round {self.round}"

    def line(self, device: str, total: int | None) -> str:
        steps = f"step {self.step}" + (f"/{total}" if total else "")
        loss = "-" if self.loss is None else f"{self.loss:.4f}"
        rate = "" if self.rate is None else f" {self.rate:.1f} ex/s"
        return f"{self.describe(device)}: {steps} loss {loss}{rate} ({self.state})"


def _latest_sessions(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each device's latest session (federated jobs have one per round)."""
    latest: dict[str, dict[str, Any]] = {}
    for s in job["sessions"]:
        current = latest.get(s["device"])
        if current is None or (s["round"] or 0) >= (current["round"] or 0):
            latest[s["device"]] = s
    return latest


def _update_rows(rows: dict[str, DeviceRow], job: dict[str, Any], points: list) -> list[str]:
    """Apply the job's sessions and the new points to the rows; the devices whose row changed."""
    changed: list[str] = []
    rounds = {s["id"]: s["round"] for s in job["sessions"]}
    for device, s in _latest_sessions(job).items():
        row = rows.setdefault(device, DeviceRow())
        if row.session_id != s["id"]:
            rows[device] = row = DeviceRow(session_id=s["id"], round=s["round"], state=s["state"])
            changed.append(device)
        elif row.state != s["state"]:
            row.state = s["state"]
            changed.append(device)
    for session_id, device, point in points:
        row = rows.setdefault(device, DeviceRow(session_id=session_id, round=rounds.get(session_id)))
        if row.session_id == session_id and point["step"] >= row.step:
            row.step, row.loss, row.rate = point["step"], point["loss"], point.get("examples_per_second")
            changed.append(device)
    return list(dict.fromkeys(changed))


def watch_job(client: Client, job_id: str, *, interval: float, plain: bool) -> int:
    """Follow the job until it ends: 0 when it succeeded, 1 when it failed or was cancelled."""
    console = Console(highlight=False, soft_wrap=True)
    job = client.get(f"/v1/jobs/{job_id}")
    total = total_steps(job["spec"])
    rows: dict[str, DeviceRow] = {}
    follower = MetricsFollower(job_id)
    if plain or not sys.stdout.isatty():

        def print_lines(changed: list[str]) -> None:
            for device in changed:
                console.print(rows[device].line(device, total))

        job = _follow(client, job, follower, rows, interval, print_lines)
    else:
        job = _watch_bars(client, job, follower, rows, total, interval, console)
    reason = f": {job['reason']}" if job["reason"] else ""
    console.print(f"job {job_id} {job['state']}{reason}")
    return 0 if job["state"] == "succeeded" else 1


def _follow(
    client: Client,
    job: dict[str, Any],
    follower: MetricsFollower,
    rows: dict[str, DeviceRow],
    interval: float,
    show: Callable[[list[str]], None],
) -> dict[str, Any]:
    """Poll the job and its metrics until it ends; `show` gets the devices whose row changed."""
    while True:
        show(_update_rows(rows, job, follower.poll(client)))
        if job["state"] in FINAL_STATES:
            return job
        time.sleep(interval)
        job = client.get(f"/v1/jobs/{job['id']}")


def _watch_bars(
    client: Client,
    job: dict[str, Any],
    follower: MetricsFollower,
    rows: dict[str, DeviceRow],
    total: int | None,
    interval: float,
    console: Console,
) -> dict[str, Any]:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[rate]}"),
        TextColumn("{task.fields[state]}"),
    )
    with Progress(*columns, console=console) as progress:
        return _follow(client, job, follower, rows, interval, _bar_updater(progress, rows, total))


def _bar_updater(
    progress: Progress, rows: dict[str, DeviceRow], total: int | None
) -> Callable[[list[str]], None]:
    """A `show` that redraws every device's bar (a new device gets one)."""
    bars: dict[str, TaskID] = {}

    def show(changed: list[str]) -> None:
        for device, row in rows.items():
            if device not in bars:
                bars[device] = progress.add_task(device, total=total, loss="-", rate="", state="")
            progress.update(
                bars[device],
                description=row.describe(device),
                completed=row.step,
                loss="-" if row.loss is None else f"{row.loss:.4f}",
                rate="" if row.rate is None else f"{row.rate:.1f} ex/s",
                state=row.state,
            )

    return show
