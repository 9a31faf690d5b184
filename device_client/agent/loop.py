"""The device agent: poll the control plane, train the assigned session on local data, report, repeat.

One session, end to end: GET /v1/assignments/next -> dial the assigned edge with the session token
-> fine-tune the job's model split across it on the local text+label data (`trainer.py`) -> POST
metrics every few steps -> POST the adapter (.tar.gz) to /complete. Any failure is reported to /fail
with a short reason (an error class and message, never the data) before it is re-raised.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx

from device_client.agent.control_client import ControlPlaneClient
from device_client.agent.credentials import DeviceCredential
from device_client.agent.datasets import as_examples
from device_client.agent.resume import Resumer, SessionInterrupted, is_edge_lost
from device_client.agent.secure_upload import SecureUploader, is_secure
from device_client.agent.trainer import SessionTrainer, TrainerOptions, TrainingProgress, load_tokenizer
from device_client.retry import RetryPolicy
from splitft.backoff import Backoff, ReconnectPolicy, retry_while
from splitft.errors import InvalidArgument, SplitftError, Unavailable
from splitft.jobs.spec import Assignment
from splitft.model.dirs import parse_model_dirs
from splitft.plan.choice import DeviceClass

logger = logging.getLogger(__name__)
MAX_REASON_CHARS = 500
MAX_BACKOFF = 60.0


def failure_reason(exc: BaseException) -> str:
    """What /fail is told: the error class and message only; other errors' text is cut to one line."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted on the device"
    text = exc.message if isinstance(exc, SplitftError) else (str(exc).splitlines() or [""])[0][:200]
    reason = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return reason[:MAX_REASON_CHARS]


@dataclass
class AgentSummary:
    """What `DeviceAgent.run` did: session ids it completed and those it reported as failed."""

    completed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    @property
    def handled(self) -> int:
        return len(self.completed) + len(self.failed)


class DeviceAgent:
    """Polls for assignments and trains them on this device's data, one session at a time.

    `model_dirs` maps the model names jobs use (as the edges serve them) to local Hugging Face
    directories with the tokenizer. `data` is a JSONL path or a sequence of examples (see
    `datasets.as_examples`); it is loaded and checked once, now. `insecure=True` dials edges in
    plaintext (for an edge started with --insecure) and accepts a plaintext http:// control plane on
    another host; otherwise the credential must hold a client certificate, its key and the CA.
    `tokenizer_loader(model_dir)` replaces AutoTokenizer. `reconnect` bounds how long a finished
    session's last metrics, its adapter upload and a failure report wait for an unreachable control
    plane (default: jittered backoff up to 30 s apart, for 10 minutes); polls retry for ever.
    `checkpoint_dir`: where sessions of jobs with
    `checkpoint_every` keep their last checkpoint (default: a temporary directory removed at `close`);
    `edge_retry`: the SDK's `RetryPolicy` for calls to the edge, whose budget is how long an edge may
    be gone before the session is reported and resumed elsewhere (`resume.py`).
    """

    def __init__(
        self,
        credential: DeviceCredential | str | Path,
        model_dirs: Mapping[str, str | Path],
        data: str | Path | Sequence[Any],
        *,
        poll_interval: float = 2.0,
        http: httpx.Client | None = None,
        metrics_every: int = 10,
        progress: Callable[[TrainingProgress], None] | None = None,
        tokenizer_loader: Callable[[Path], Any] | None = None,
        insecure: bool = False,
        connect_timeout: float = 30.0,
        record_dir: str | Path | None = None,
        reconnect: ReconnectPolicy | None = None,
        checkpoint_dir: str | Path | None = None,
        edge_retry: RetryPolicy | None = None,
        device_class: DeviceClass | None = None,
    ) -> None:
        if poll_interval <= 0 or metrics_every < 1:
            raise InvalidArgument("poll_interval must be > 0 and metrics_every >= 1")
        if not isinstance(credential, DeviceCredential):
            credential = DeviceCredential.load(credential)
        self.credential = credential
        self.poll_interval = poll_interval
        self.reconnect = reconnect or ReconnectPolicy()
        self.client = ControlPlaneClient(credential, http, insecure=insecure)
        options = TrainerOptions(
            metrics_every=metrics_every,
            progress=progress,
            tokenizer_loader=tokenizer_loader or load_tokenizer,
            insecure=insecure,
            connect_timeout=connect_timeout,
            record_dir=Path(record_dir) if record_dir is not None else None,
            edge_retry=edge_retry,
        )
        dirs = {name: Path(path) for name, path in model_dirs.items()}
        self.resumer = Resumer(self.client, Path(checkpoint_dir) if checkpoint_dir is not None else None)
        options.checkpoint_root = self.resumer.root
        self.trainer = SessionTrainer(credential, dirs, as_examples(data), self.client, options)
        self._stop = threading.Event()
        self._retry_after: float | None = None
        self._device_class = device_class  # registered with the first poll that reaches the control plane

    # - the loop -

    def poll(self) -> Assignment | None:
        """Ask once for work; None when nothing is assigned yet. The first poll that reaches the
        control plane registers this device's class first, when one was given."""
        if self._device_class is not None:
            self.client.set_device_class(self._device_class.model_dump(mode="json"))
            logger.info("registered this device's class: %s", self._device_class.model_dump_json())
            self._device_class = None
        assignment, self._retry_after = self.client.next_assignment()
        if assignment is not None:
            logger.info(
                "assigned session %s of job %s on edge %s",
                assignment.session_id,
                assignment.job_id,
                assignment.edge_address,
            )
        return assignment

    def run_once(self) -> str | None:
        """Poll once and train what was assigned; the session id, or None if there was nothing."""
        assignment = self.poll()
        if assignment is None:
            return None
        self.run_session(assignment)
        return assignment.session_id

    def run(self, max_sessions: int | None = None, stop: threading.Event | None = None) -> AgentSummary:
        """Poll and train until `stop` is set or `max_sessions` sessions were handled (either way).

        A failed session is reported and logged, and the agent goes on; an unreachable control plane
        is retried with backoff; any other control-plane error (e.g. a revoked credential) is raised.
        """
        if stop is not None:
            self._stop = stop
        summary = AgentSummary()
        policy = ReconnectPolicy(self.poll_interval, max(MAX_BACKOFF, self.poll_interval), budget_s=None)
        backoff = Backoff(policy)
        while not self._stop.is_set() and (max_sessions is None or summary.handled < max_sessions):
            try:
                assignment = self.poll()
            except Unavailable as exc:
                delay = backoff.next_delay() or self.poll_interval
                logger.warning("control plane unavailable, retrying in %.1f s: %s", delay, exc.message)
                self._stop.wait(delay)
                continue
            backoff.reset()
            if assignment is None:
                self._stop.wait(max(self._retry_after or 0.0, self.poll_interval))
                continue
            try:
                self.run_session(assignment)
                summary.completed.append(assignment.session_id)
            except SessionInterrupted:  # placed again by the control plane: a later poll resumes it
                continue
            except Exception:  # already logged and reported to the control plane
                summary.failed.append(assignment.session_id)
        return summary

    def stop(self) -> None:
        """Ask `run` to return; a session in progress stops at its next step and is reported failed."""
        self._stop.set()

    def close(self) -> None:
        """Close the control-plane client; remove the checkpoints of a temporary checkpoint root."""
        self.client.close()
        self.resumer.close()

    def __enter__(self) -> DeviceAgent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # - one session -

    def run_session(self, assignment: Assignment) -> None:
        """Train one assignment, flush its metrics and upload its adapter; on failure report /fail,
        then re-raise. An unreachable control plane is retried within `reconnect`'s budget."""
        sid = assignment.session_id
        try:
            archive = self.trainer.train(assignment, self._stop)
        except BaseException as exc:
            self._flush_metrics(sid)  # what it reported before it stopped, whatever comes next
            self._interrupted_or_failed(assignment, exc)
            raise
        self._flush_metrics(sid)  # before the upload: a finished session takes no more points
        self.resumer.forget(sid)  # trained: its checkpoints are no longer needed
        try:
            examples = len(self.trainer.examples) if assignment.round is not None else None  # FedAvg's weight
            if is_secure(assignment):  # only the masked update leaves (secure_upload.py); not retried:
                uploader = SecureUploader(self.client, self.credential.device_name, self._stop)
                uploader.upload(assignment, archive, examples or 1)  # a second key would be refused
            else:
                upload = lambda: self.client.complete(sid, archive, examples)  # noqa: E731
                self._retrying(upload, f"upload the adapter of {sid}")
        except SplitftError as exc:  # e.g. the archive was refused: the session cannot succeed now
            logger.error("session %s: the control plane did not take the adapter: %s", sid, exc.message)
            self._report_failure(sid, f"adapter upload failed: {failure_reason(exc)}"[:MAX_REASON_CHARS])
            raise
        logger.info("session %s complete: uploaded a %d-byte adapter", sid, len(archive))

    def _flush_metrics(self, session_id: str) -> None:
        send = lambda points: self.client.report_metrics(session_id, points)  # noqa: E731
        self.trainer.metrics.flush(send, self.reconnect, self._stop)

    def _interrupted_or_failed(self, assignment: Assignment, exc: BaseException) -> None:
        """A lost edge is reported for the session to be placed again (`SessionInterrupted`, unless
        the control plane answers it failed, past its resume bound); anything else is reported /fail."""
        sid = assignment.session_id
        if isinstance(exc, SessionInterrupted):
            raise exc
        if is_edge_lost(exc) and not self._stop.is_set():
            state = self.resumer.report(assignment, exc)
            if state != "failed":
                raise SessionInterrupted(sid, state or "not reported") from exc
            logger.error("session %s failed: its edge was lost past the resume bound: %s", sid, exc)
            return  # the control plane failed it already
        self.resumer.forget(sid)
        reason = failure_reason(exc)
        logger.error("session %s failed: %s", sid, reason, exc_info=not isinstance(exc, SplitftError))
        self._report_failure(sid, reason)

    def _report_failure(self, session_id: str, reason: str) -> None:
        try:
            self._retrying(
                lambda: self.client.fail(session_id, reason), f"report the failure of {session_id}"
            )
        except SplitftError as exc:
            logger.warning("could not report the failure of session %s: %s", session_id, exc.message)

    def _retrying(self, call: Callable[[], None], what: str) -> None:
        """Retry only Unavailable (unreachable, 5xx): the control plane restarting loses nothing it
        acknowledged, and /complete and /fail take a retried request once."""
        retry_while(
            call, lambda exc: isinstance(exc, Unavailable), self.reconnect, what=what, stop=self._stop
        )


def run_device(
    credential_path: str | Path,
    data: str | Path | Sequence[Any],
    model_dirs: Sequence[str] | Mapping[str, str | Path],
    *,
    control_plane: str | None = None,
    max_sessions: int | None = None,
    poll_interval: float = 2.0,
    insecure: bool = False,
    stop: threading.Event | None = None,
    progress: Callable[[TrainingProgress], None] | None = None,
    record_dir: str | Path | None = None,
    checkpoint_dir: str | Path | None = None,
    edge_retry: RetryPolicy | None = None,
    device_class: DeviceClass | None = None,
) -> AgentSummary:
    """What `splitft device run` does: load the credential (URL overridable), then run the agent."""
    credential = DeviceCredential.load(credential_path)
    if control_plane:
        credential = replace(credential, control_plane=control_plane)
    dirs = model_dirs if isinstance(model_dirs, Mapping) else parse_model_dirs(model_dirs)
    with DeviceAgent(
        credential,
        dirs,
        data,
        poll_interval=poll_interval,
        progress=progress,
        insecure=insecure,
        record_dir=record_dir,
        checkpoint_dir=checkpoint_dir,
        edge_retry=edge_retry,
        device_class=device_class,
    ) as agent:
        return agent.run(max_sessions=max_sessions, stop=stop)
