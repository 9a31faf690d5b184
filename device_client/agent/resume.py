"""The device agent resumes a session by itself when its edge dies (docs/resilience.md).

With the job's `checkpoint_every`, the trainer checkpoints its session every N optimizer steps into
`<checkpoint root>/<session id>` on the device (the last good checkpoint only), with a data cursor:
the epoch and batch index in `training_batches` order, and a fingerprint of the local examples.
When the edge is lost (`is_edge_lost`), `Resumer.report` tells the control plane (POST
/v1/sessions/{id}/edge-lost), which places the same session again, on another healthy edge when one
has room; the agent's poll gets it back and the trainer reopens it with `SplitModel.from_checkpoint`
(`open_resumed`) and goes on from the cursor, so the run ends as an uninterrupted one would. Without
`checkpoint_every` the session starts again from its first step (same seeds, same result, more
steps). The control plane bounds the placements per session (SPLITFT_MAX_SESSION_RESUMES); past it
the session fails.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from device_client.agent.assignment import epochs_of
from device_client.agent.control_client import ControlPlaneClient
from device_client.agent.datasets import Batch, TextExample, batches_per_epoch, epoch_batches
from device_client.checkpoint_files import CorruptCheckpoint, checkpoint_dirs, latest_checkpoint
from device_client.connection import EdgeConnection
from device_client.model import SplitModel
from device_client.retry import RetryPolicy
from splitft.errors import AlreadyExists, FailedPrecondition, NotFound, SplitftError, Unavailable
from splitft.jobs.spec import Assignment, JobCreate
from splitft.security.tokens import check_session_id, unverified_claims
from splitft.v1 import dataplane_pb2 as pb

logger = logging.getLogger(__name__)
MAX_REASON_CHARS = 500


class SessionInterrupted(Exception):
    """The session's edge was lost and reported; the control plane places the session again and the
    agent's next poll brings it back (from its checkpoint). Not a failure, not yet handled."""

    def __init__(self, session_id: str, state: str) -> None:
        super().__init__(f"session {session_id} interrupted: its edge was lost (now {state})")
        self.session_id = session_id


def is_edge_lost(exc: BaseException) -> bool:
    """True for what a dead or restarted edge looks like from the device: unreachable (retries gave
    up, `EdgeUnreachable`; or at open, or a deadline) or NOT_FOUND "unknown session" (an edge that
    restarted within the retry budget). The trainer calls the control plane only outside the edge
    part of a session (or swallows its failures: metrics), so an Unavailable here is the edge's."""
    if isinstance(exc, Unavailable):
        return True
    return isinstance(exc, NotFound) and "unknown session" in exc.message


def data_fingerprint(examples: Sequence[TextExample]) -> str:
    """What the cursor's positions index: a checkpoint taken on other data must not resume."""
    digest = hashlib.sha256()
    for example in examples:
        digest.update(f"{len(example.text)}:{example.text}:{example.label};".encode())
    return digest.hexdigest()[:32]


def data_cursor(step: int, examples: int, batch_size: int, fingerprint: str) -> dict[str, Any]:
    """Where the batch of optimizer step `step` (0-based; one batch per step) is in the
    `training_batches` order: its epoch and its index in that epoch."""
    epoch, index = divmod(step, batches_per_epoch(examples, batch_size))
    return {"epoch": epoch, "index": index, "step": step, "examples": examples, "data": fingerprint}


def batches_from(
    examples: Sequence[TextExample], batch_size: int, *, seed: int, epochs: int | None, cursor: dict[str, Any]
) -> Iterator[Batch]:
    """`training_batches` from the cursor's position on: the same batches in the same order as
    the uninterrupted run meets them from that step."""
    epoch, index = int(cursor["epoch"]), int(cursor["index"])
    while epochs is None or epoch < epochs:
        for position, batch in enumerate(epoch_batches(examples, batch_size, seed=seed, epoch=epoch)):
            if position >= index:
                yield batch
        epoch, index = epoch + 1, 0


def check_cursor(cursor: Any, step: int, examples: Sequence[TextExample], batch_size: int) -> dict[str, Any]:
    """The checkpoint's cursor, if it is where this device's data and the checkpoint's step say."""
    expected = data_cursor(step, len(examples), batch_size, data_fingerprint(examples))
    if cursor != expected:
        raise FailedPrecondition(
            f"the checkpoint's data cursor {cursor!r} does not fit this device's data at step {step} "
            f"(expected {expected!r}): the local examples changed"
        )
    return expected


def resume_and_checkpoint(
    model: SplitModel,
    scheduler: Any,
    spec: JobCreate,
    examples: Sequence[TextExample],
    seed: int,
    root: Path | None,
) -> tuple[int, Iterator[Batch]]:
    """Where the fit starts (0, or a resumed model's checkpoint step, its scheduler restored) and its
    batches from there; with the job's `checkpoint_every` and a `root`, checkpoints from now on,
    each with its data cursor (the last good one kept)."""
    fingerprint = data_fingerprint(examples)
    if model.resumed is None:
        start, cursor = 0, data_cursor(0, len(examples), spec.batch_size, fingerprint)
    else:
        model.resumed.restore_scheduler(scheduler)
        start = model.resumed.step
        cursor = check_cursor(model.resumed.cursor, start, examples, spec.batch_size)
        logger.info(
            "resuming from %s at step %d (epoch %d, batch %d)",
            model.resumed.directory,
            start,
            cursor["epoch"],
            cursor["index"],
        )
    optimizer = model.optimizer
    if root is not None and spec.checkpoint_every is not None and optimizer is not None:

        def position() -> dict[str, Any]:  # written before the forward of step `steps_taken`: its batch
            return data_cursor(optimizer.steps_taken, len(examples), spec.batch_size, fingerprint)

        model.checkpoint_every(spec.checkpoint_every, root, scheduler=scheduler, cursor=position)
    batches = batches_from(examples, spec.batch_size, seed=seed, epochs=epochs_of(spec), cursor=cursor)
    return start, batches


def open_resumed(model_dir: Path, conn: EdgeConnection, root: Path, retry: RetryPolicy | None) -> SplitModel:
    """Reopen the session on `conn` from the newest checkpoint under `root`. An edge that still
    holds the session (the device lost its link, not the edge its memory) answers ALREADY_EXISTS:
    that stale copy is closed, with the session's token, and the open tried once more."""
    try:
        return SplitModel.from_checkpoint(root, edge=conn, model_dir=model_dir, retry=retry)
    except AlreadyExists:
        if not conn.token:
            raise
        session_id = unverified_claims(conn.token).session
        logger.warning(
            "edge %s still holds session %s: closing that copy to resume", conn.address, session_id
        )
        conn.call("CloseSession", pb.CloseSessionRequest(session_id=session_id))
        return SplitModel.from_checkpoint(root, edge=conn, model_dir=model_dir, retry=retry)


@contextmanager
def closing(model: SplitModel) -> Iterator[SplitModel]:
    """`with model:`, except that closing after a failure never replaces that failure (closing the
    session of a dead edge fails too, and the first error is the one to report)."""
    try:
        yield model
    except BaseException:
        try:
            model.close()
        except SplitftError as exc:
            logger.info("could not close the session after its failure: %s", exc.message)
        raise
    model.close()


def has_checkpoint(root: Path) -> bool:
    """Whether `root` holds a checkpoint that verifies."""
    if not checkpoint_dirs(root):
        return False
    try:
        latest_checkpoint(root)
    except (NotFound, CorruptCheckpoint) as exc:
        logger.warning("no usable checkpoint in %s: %s", root, exc)
        return False
    return True


class Resumer:
    """The agent's checkpoint directories, one per session, and its edge-lost reports.

    `root`: where checkpoints live (the agent's --checkpoint-dir); None: a temporary directory for
    the agent's lifetime, removed by `close`. Directories of sessions that ended are removed; a
    session's directory lives from its first checkpoint to its end (completed, failed, or the
    control plane refusing to resume it)."""

    def __init__(self, client: ControlPlaneClient, root: Path | None = None) -> None:
        self.client = client
        self._owned = root is None
        self.root = Path(tempfile.mkdtemp(prefix="splitft-checkpoints-")) if root is None else Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def session_dir(self, session_id: str) -> Path:
        return self.root / check_session_id(session_id)

    def report(self, assignment: Assignment, exc: BaseException) -> str | None:
        """Tell the control plane the edge is lost; the session's state it answers ("failed": over),
        or None when the control plane could not be told (the session stays where it is: its own
        heartbeat timeout re-places a dead edge's sessions, and the same assignment comes back)."""
        reason = f"{type(exc).__name__}: {getattr(exc, 'message', str(exc))}"[:MAX_REASON_CHARS]
        sid = assignment.session_id
        try:
            answer = self.client.edge_lost(sid, reason, assignment.edge_address)
        except SplitftError as err:
            logger.warning("could not report the lost edge of session %s: %s", sid, err.message)
            return None
        logger.warning(
            "session %s lost edge %s (%s); the control plane says %s (placement %d, at most %d resumes)",
            sid,
            assignment.edge_address,
            reason,
            answer.state,
            answer.placements,
            answer.max_resumes,
        )
        if answer.state == "failed":
            self.forget(sid)
        return answer.state

    def forget(self, session_id: str) -> None:
        """The session ended: its checkpoints go."""
        shutil.rmtree(self.session_dir(session_id), ignore_errors=True)

    def close(self) -> None:
        if self._owned:
            shutil.rmtree(self.root, ignore_errors=True)
