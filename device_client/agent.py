"""The device agent: poll the control plane, train the assigned session on local data, report, repeat.

One session, end to end: GET /v1/assignments/next -> dial the assigned edge with the session token
-> fine-tune the job's model split across it on the local text+label data -> POST metrics every few
steps -> POST the adapter (.tar.gz) to /complete. Any failure is reported to /fail with a short
reason (an error class and message, never the data) before it is re-raised. Each session's RNG is
seeded from its id, so a rerun of the same session on the same data is reproducible.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import itertools
import logging
import math
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import httpx
import peft
import torch

from device_client.connection import EdgeConnection
from device_client.credentials import DEFAULT_HTTP_TIMEOUT, DeviceCredential, request, response_json
from device_client.datasets import TextExample, as_examples, batches_per_epoch, training_batches
from device_client.model import ADAPTER_WEIGHTS, SplitModel
from splitft.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    SplitftError,
    Unavailable,
)
from splitft.methods.taskedge import TaskEdgeConfig
from splitft.methods.tinytrain import TinyTrainConfig
from splitft.model.loading import read_config
from splitft.security.tokens import check_session_id, unverified_claims
from splitft.security.trust import check_control_url, control_client
from splitft.wire.serde import EDGE_OPTIMIZERS

logger = logging.getLogger(__name__)
RECORD_EXAMPLES = 8  # local examples whose evaluation logits a recorded session keeps

# What /complete accepts in the archive: a peft LoRA adapter, or a selection method's sparse deltas
# (with, when the head is new, head.safetensors); nothing else (splitft_control.archive).
ADAPTER_LAYOUTS = (
    ("adapter_config.json", ADAPTER_WEIGHTS),
    ("sparse_config.json", "sparse_deltas.safetensors"),
)
ADAPTER_OPTIONAL = ((), ("head.safetensors",))
SEQ_CLS_MAPPING = "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES"  # families the agent can train
MAX_REASON_CHARS = 500
MAX_PENDING_POINTS = 10_000  # MetricsReport's own limit; older points are dropped beyond it
MAX_RETRY_AFTER = 300.0
MAX_BACKOFF = 60.0
OPTIMIZERS = {name: getattr(torch.optim, name) for name in EDGE_OPTIMIZERS}


# --- the assignment, mirrored from services/schemas.py (the device has no pydantic models) --------


@dataclass(frozen=True)
class LoraSpec:
    target_modules: list[str]
    r: int = 8
    lora_alpha: float = 16
    lora_dropout: float = 0.0
    task_type: str | None = None


@dataclass(frozen=True)
class TaskEdgeSpec:
    budget_fraction: float = 0.001
    n_m: list[int] | None = None
    target_modules: list[str] | None = None
    calibration_batches: int = 4  # labels-free local batches the selection is scored on


@dataclass(frozen=True)
class TinyTrainSpec:
    memory_budget_bytes: float | None = None  # None: no limit
    compute_budget_macs: float | None = None
    channel_ratios: list[float] = field(default_factory=lambda: [1.0, 0.5, 0.25, 0.125])
    target_modules: list[str] | None = None
    calibration_batches: int = 4  # labelled local batches: the support set


@dataclass(frozen=True)
class OptimizerSpec:
    name: str = "AdamW"  # AdamW, Adam or SGD: what the edge can run for the trunk adapter
    lr: float = 1e-3
    weight_decay: float = 0.0


@dataclass(frozen=True)
class ScheduleSpec:
    name: str = "constant"  # constant, linear or cosine, each after `warmup_steps` of linear warmup
    warmup_steps: int = 0


@dataclass(frozen=True)
class JobSpec:
    """The fields of JobCreate a device trains by; unknown fields are ignored (forward compatible)."""

    model: str  # the model's name on the edge, and the key of the agent's local model_dirs
    device_layers: int
    lora: LoraSpec | None = None  # with method "lora"
    method: str = "lora"  # "lora", "taskedge" or "tinytrain"
    taskedge: TaskEdgeSpec | None = None
    tinytrain: TinyTrainSpec | None = None
    name: str = ""
    head_layers: int = 0
    trunk_lora: bool = True
    codec: str = "raw"
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)
    schedule: ScheduleSpec = field(default_factory=ScheduleSpec)
    steps: int | None = None  # exactly one of steps and epochs is set
    epochs: int | None = None
    batch_size: int = 16
    max_length: int = 128
    num_labels: int | None = None
    clip_grad_norm: float | None = 1.0


@dataclass(frozen=True)
class Assignment:
    session_id: str
    job_id: str
    edge_address: str
    token: str = field(repr=False)
    spec: JobSpec


def _build(cls: type[Any], raw: Any, nested: Mapping[str, type[Any]] | None = None) -> Any:
    """A dataclass from a JSON object, keeping only the fields it knows."""
    if not isinstance(raw, dict):
        raise TypeError(f"{cls.__name__} must be a JSON object")
    known = {f.name for f in fields(cls)}
    values = {k: v for k, v in raw.items() if k in known}
    for name, sub in (nested or {}).items():
        if values.get(name) is not None:
            values[name] = _build(sub, values[name])
    return cls(**values)


def parse_assignment(raw: Any) -> Assignment:
    """An Assignment from the control plane's JSON; a malformed one is the server's fault."""
    nested = {
        "lora": LoraSpec,
        "taskedge": TaskEdgeSpec,
        "tinytrain": TinyTrainSpec,
        "optimizer": OptimizerSpec,
        "schedule": ScheduleSpec,
    }
    try:
        spec = _build(JobSpec, raw.get("spec") if isinstance(raw, dict) else None, nested)
        assignment = _build(Assignment, {**raw, "spec": spec})
    except TypeError as exc:
        raise Unavailable(f"the control plane sent a malformed assignment: {exc}") from None
    if (spec.steps is None) == (spec.epochs is None):
        raise Unavailable("the control plane sent an assignment without exactly one of steps or epochs")
    try:  # the session id names files under --record-dir and URL paths: never a path of its own
        check_session_id(assignment.session_id)
    except InvalidArgument as exc:
        raise Unavailable(f"the control plane sent a malformed assignment: {exc.message}") from None
    return assignment


# --- REST ----------------------------------------------------------------------------------------


class ControlPlaneClient:
    """The device routes of the control plane, authenticated with the device credential."""

    def __init__(
        self, credential: DeviceCredential, http: httpx.Client | None = None, *, insecure: bool = False
    ) -> None:
        # Plaintext to another host is refused unless insecure; HTTPS is verified against the CA
        # that verified the control plane at enrollment, else (a credential enrolled over loopback
        # HTTP or before HTTPS, or through a public certificate) the deployment CA and public CAs.
        self.base = check_control_url(credential.control_plane, insecure=insecure)
        self._headers = credential.auth_headers
        self._owned = http is None
        if http is None:
            anchor = credential.control_plane_ca_pem
            http = control_client(
                anchor or credential.ca_pem, public_cas=anchor is None, timeout=DEFAULT_HTTP_TIMEOUT
            )
        self.http = http

    def next_assignment(self) -> tuple[Assignment | None, float | None]:
        """The next assignment, or None and the server's Retry-After (seconds) when there is none."""
        response = request(self.http, "GET", f"{self.base}/v1/assignments/next", headers=self._headers)
        if response.status_code == 204:
            return None, _retry_after(response)
        return parse_assignment(response_json(response)), None

    def report_metrics(self, session_id: str, points: list[dict[str, Any]]) -> None:
        url = f"{self.base}/v1/sessions/{session_id}/metrics"
        request(self.http, "POST", url, headers=self._headers, json={"points": points})

    def complete(self, session_id: str, archive: bytes) -> None:
        headers = {**self._headers, "Content-Type": "application/gzip"}
        url = f"{self.base}/v1/sessions/{session_id}/complete"
        request(self.http, "POST", url, headers=headers, content=archive)

    def fail(self, session_id: str, reason: str) -> None:
        url = f"{self.base}/v1/sessions/{session_id}/fail"
        request(self.http, "POST", url, headers=self._headers, json={"reason": reason})

    def close(self) -> None:
        if self._owned:
            self.http.close()


def _retry_after(response: httpx.Response) -> float | None:
    try:
        seconds = float(response.headers.get("Retry-After", ""))
    except ValueError:
        return None  # absent, or an HTTP date: fall back to the agent's own interval
    return min(max(seconds, 0.0), MAX_RETRY_AFTER) if math.isfinite(seconds) else None


# --- pure pieces of a session --------------------------------------------------------------------


def session_seed(session_id: str) -> int:
    """A seed fixed by the session id (not Python's salted hash), so a rerun trains identically."""
    return int.from_bytes(hashlib.sha256(f"splitft-session:{session_id}".encode()).digest()[:8], "big") >> 2


def total_steps(spec: JobSpec, num_examples: int) -> int:
    if spec.steps is not None:
        return spec.steps
    if spec.epochs is None:
        raise InvalidArgument("the job gives neither steps nor epochs")
    return spec.epochs * batches_per_epoch(num_examples, spec.batch_size)


def lr_factor(schedule: str, step: int, warmup: int, total: int) -> float:
    """The LR multiplier before optimizer step `step` (0-based), as transformers' schedules define it."""
    if step < warmup:
        return step / max(1, warmup)
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    if schedule == "cosine":
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))
    raise InvalidArgument(f"unknown LR schedule {schedule!r} (constant, linear or cosine)")


def make_scheduler(
    optimizer: torch.optim.Optimizer, schedule: ScheduleSpec, total: int
) -> torch.optim.lr_scheduler.LambdaLR:
    lr_factor(schedule.name, total, 0, total)  # refuse an unknown name now, not at the first step
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(schedule.name, step, schedule.warmup_steps, total)
    )


def make_optimizer(model: SplitModel, spec: OptimizerSpec) -> torch.optim.Optimizer:
    cls = OPTIMIZERS.get(spec.name)
    if cls is None:
        raise InvalidArgument(f"unknown optimizer {spec.name!r} (one of {', '.join(OPTIMIZERS)})")
    return model.configure_optimizer(cls, lr=spec.lr, weight_decay=spec.weight_decay)


def taskedge_config(spec: JobSpec) -> TaskEdgeConfig:
    te = spec.taskedge or TaskEdgeSpec()
    return TaskEdgeConfig(
        budget_fraction=te.budget_fraction,
        n_m=tuple(te.n_m) if te.n_m else None,  # type: ignore[arg-type]
        target_modules=te.target_modules,
    )


def tinytrain_config(spec: JobSpec) -> TinyTrainConfig:
    tt = spec.tinytrain or TinyTrainSpec()
    return TinyTrainConfig(
        memory_budget_bytes=math.inf if tt.memory_budget_bytes is None else tt.memory_budget_bytes,
        compute_budget_macs=math.inf if tt.compute_budget_macs is None else tt.compute_budget_macs,
        channel_ratios=tuple(tt.channel_ratios),
        target_modules=tt.target_modules,
    )


def method_config(spec: JobSpec) -> TaskEdgeConfig | TinyTrainConfig | peft.LoraConfig:
    """What trains, from the job's method."""
    if spec.method == "taskedge":
        return taskedge_config(spec)
    if spec.method == "tinytrain":
        return tinytrain_config(spec)
    return lora_config(spec)


def lora_config(spec: JobSpec) -> peft.LoraConfig:
    """The job's LoRA as peft wants it; the agent's data are labelled texts, so only SEQ_CLS fits."""
    if spec.lora is None:
        raise InvalidArgument("a LoRA job needs a lora spec")
    if spec.lora.task_type not in (None, "SEQ_CLS"):
        raise InvalidArgument(f"the device agent trains sequence classifiers, not {spec.lora.task_type}")
    alpha = spec.lora.lora_alpha
    return peft.LoraConfig(
        r=spec.lora.r,
        lora_alpha=int(alpha) if float(alpha).is_integer() else alpha,  # type: ignore[arg-type]
        lora_dropout=spec.lora.lora_dropout,
        target_modules=list(spec.lora.target_modules),
        task_type=spec.lora.task_type or "SEQ_CLS",
    )


def pack_adapter(directory: str | Path) -> bytes:
    """The adapter's files as a .tar.gz, byte-identical for identical files; other files in the
    directory (a peft README.md, say) are left out, since the control plane accepts only these."""
    root = Path(directory)
    layouts = [[name for name in layout if not (root / name).is_file()] for layout in ADAPTER_LAYOUTS]
    index = min(range(len(layouts)), key=lambda i: len(layouts[i]))
    if layouts[index]:
        raise FailedPrecondition(f"adapter directory {root} lacks {', '.join(layouts[index])}")
    wanted = {*ADAPTER_LAYOUTS[index], *ADAPTER_OPTIONAL[index]}
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for path in sorted(p for p in root.iterdir() if p.is_file() and p.name in wanted):
            data = path.read_bytes()
            info = tarfile.TarInfo(path.name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def failure_reason(exc: BaseException) -> str:
    """What /fail is told: the error class and message only; other errors' text is cut to one line."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted on the device"
    text = exc.message if isinstance(exc, SplitftError) else (str(exc).splitlines() or [""])[0][:200]
    reason = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return reason[:MAX_REASON_CHARS]


@dataclass(frozen=True)
class TrainingProgress:
    """Handed to the progress callback after every optimizer step."""

    session_id: str
    step: int  # optimizer steps done, 1-based
    total_steps: int
    loss: float


@dataclass
class AgentSummary:
    """What `DeviceAgent.run` did: session ids it completed and those it reported as failed."""

    completed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    @property
    def handled(self) -> int:
        return len(self.completed) + len(self.failed)


class _Window:
    """Loss and throughput since the last metrics report: one MetricPoint per report."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.examples = 0
        self.started = time.perf_counter()

    def reset(self) -> None:
        self.losses, self.examples, self.started = [], 0, time.perf_counter()

    def add(self, loss: float, examples: int) -> None:
        self.losses.append(loss)
        self.examples += examples

    def point(self, step: int, model: SplitModel) -> dict[str, Any]:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        stats = model.stats
        point = {
            "step": step,
            "loss": sum(self.losses) / len(self.losses),
            "examples_per_second": self.examples / elapsed,
            "bytes_sent": stats.bytes_sent,
            "bytes_received": stats.bytes_received,
        }
        self.reset()  # the next point covers only the steps after this one
        return point


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "tokenizer.model")


def _load_tokenizer(model_dir: Path) -> Any:
    """The model directory's own tokenizer; refuse to guess one.

    transformers 5 builds an EMPTY tokenizer (special tokens only) for a directory without tokenizer
    files, which would train silently on [UNK]s: hence the two checks.
    """
    from transformers import AutoTokenizer

    if not any((model_dir / name).is_file() for name in TOKENIZER_FILES):
        raise FailedPrecondition(f"{model_dir} has no tokenizer files ({', '.join(TOKENIZER_FILES)})")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise FailedPrecondition(f"cannot load the tokenizer in {model_dir}: {type(exc).__name__}") from None
    if len(tokenizer) <= len(tokenizer.all_special_tokens):
        raise FailedPrecondition(f"the tokenizer in {model_dir} has no vocabulary beyond special tokens")
    return tokenizer


# --- the agent -----------------------------------------------------------------------------------


class DeviceAgent:
    """Polls for assignments and trains them on this device's data, one session at a time.

    `model_dirs` maps the model names jobs use (as the edges serve them) to local Hugging Face
    directories with the tokenizer. `data` is a JSONL path or a sequence of examples (see
    `datasets.as_examples`); it is loaded and checked once, now. `insecure=True` dials edges in
    plaintext (for an edge started with --insecure) and accepts a plaintext http:// control plane on
    another host; otherwise the credential must hold a client
    certificate, its key and the CA. `tokenizer_loader(model_dir)` replaces AutoTokenizer.
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
    ) -> None:
        if poll_interval <= 0 or metrics_every < 1:
            raise InvalidArgument("poll_interval must be > 0 and metrics_every >= 1")
        if not isinstance(credential, DeviceCredential):
            credential = DeviceCredential.load(credential)
        self.credential = credential
        self.model_dirs = {name: Path(path) for name, path in model_dirs.items()}
        self.examples: list[TextExample] = as_examples(data)
        self.poll_interval = poll_interval
        self.metrics_every = metrics_every
        self.progress = progress
        self.insecure = insecure
        self.connect_timeout = connect_timeout
        self.record_dir = Path(record_dir) if record_dir is not None else None
        self.client = ControlPlaneClient(credential, http, insecure=insecure)
        self._tokenizer_loader = tokenizer_loader or _load_tokenizer
        self._stop = threading.Event()
        self._retry_after: float | None = None
        self._pending: list[dict[str, Any]] = []

    # - the loop -

    def poll(self) -> Assignment | None:
        """Ask once for work; None when nothing is assigned yet."""
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
        summary, backoff = AgentSummary(), self.poll_interval
        while not self._stop.is_set() and (max_sessions is None or summary.handled < max_sessions):
            try:
                assignment = self.poll()
            except Unavailable as exc:
                logger.warning("control plane unavailable, retrying in %.0f s: %s", backoff, exc.message)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            backoff = self.poll_interval
            if assignment is None:
                self._stop.wait(max(self._retry_after or 0.0, self.poll_interval))
                continue
            try:
                self.run_session(assignment)
                summary.completed.append(assignment.session_id)
            except Exception:  # already logged and reported to the control plane
                summary.failed.append(assignment.session_id)
        return summary

    def stop(self) -> None:
        """Ask `run` to return; a session in progress stops at its next step and is reported failed."""
        self._stop.set()

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> DeviceAgent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # - one session -

    def run_session(self, assignment: Assignment) -> None:
        """Train one assignment and upload its adapter; on failure report /fail, then re-raise."""
        sid = assignment.session_id
        self._pending = []
        try:
            archive = self._train(assignment)
        except BaseException as exc:
            reason = failure_reason(exc)
            logger.error("session %s failed: %s", sid, reason, exc_info=not isinstance(exc, SplitftError))
            self._report_failure(sid, reason)
            raise
        try:
            self._with_retries(lambda: self.client.complete(sid, archive), f"upload the adapter of {sid}")
        except SplitftError as exc:  # e.g. the archive was refused: the session cannot succeed now
            logger.error("session %s: the control plane did not take the adapter: %s", sid, exc.message)
            self._report_failure(sid, f"adapter upload failed: {failure_reason(exc)}"[:MAX_REASON_CHARS])
            raise
        logger.info("session %s complete: uploaded a %d-byte adapter", sid, len(archive))

    def _report_failure(self, session_id: str, reason: str) -> None:
        try:
            self.client.fail(session_id, reason)
        except SplitftError as exc:
            logger.warning("could not report the failure of session %s: %s", session_id, exc.message)

    def _with_retries(self, call: Callable[[], None], what: str, attempts: int = 3) -> None:
        """Retry only Unavailable: the adapter took a whole session to make, worth a few seconds."""
        for attempt in range(1, attempts + 1):
            try:
                return call()
            except Unavailable as exc:
                if attempt == attempts:
                    raise
                logger.warning("could not %s (attempt %d): %s", what, attempt, exc.message)
                time.sleep(2 ** (attempt - 1))

    def _train(self, assignment: Assignment) -> bytes:
        spec = assignment.spec
        model_dir = self._model_dir(spec)
        tokenizer = self._tokenizer_loader(model_dir)
        seed = session_seed(assignment.session_id)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # the trunk adapter's init, the head's and dropout follow from it
            with self._connect(assignment) as conn:
                with self._build_model(model_dir, conn, spec) as model:
                    self._check_labels(model)
                    if spec.method in ("taskedge", "tinytrain"):
                        self._calibrate(model, tokenizer, spec, seed)
                    self._fit(model, tokenizer, assignment, seed)
                    if self.record_dir is not None:
                        self._record(model, tokenizer, assignment)
                    with tempfile.TemporaryDirectory(prefix="splitft-adapter-") as tmp:
                        model.save_adapter(tmp)
                        return pack_adapter(tmp)

    def _record(self, model: SplitModel, tokenizer: Any, assignment: Assignment) -> None:
        """Keep what this device saw at the end: its adapter and its evaluation logits on a few local
        examples, so anyone can check the adapter served by the control plane reproduces them."""
        assert self.record_dir is not None
        out = self.record_dir / check_session_id(assignment.session_id)
        model.save_adapter(out / "adapter")
        texts = [e.text for e in self.examples[:RECORD_EXAMPLES]]
        batch = tokenizer(
            texts, padding=True, truncation=True, max_length=assignment.spec.max_length, return_tensors="pt"
        )
        model.eval()
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        torch.save(
            {"texts": texts, "logits": logits, "max_length": assignment.spec.max_length},
            out / "eval_logits.pt",
        )
        logger.info(
            "recorded the adapter and evaluation logits of session %s in %s", assignment.session_id, out
        )

    def _model_dir(self, spec: JobSpec) -> Path:
        model_dir = self.model_dirs.get(spec.model)
        if model_dir is None:
            known = ", ".join(sorted(self.model_dirs)) or "none"
            raise NotFound(f"this device has no local directory for model {spec.model!r} (it has: {known})")
        _config, family = read_config(model_dir)
        if family.class_mapping != SEQ_CLS_MAPPING:
            raise InvalidArgument(
                f"the device agent trains text classifiers; {spec.model!r} is a {family.example_task} model"
            )
        return model_dir

    def _connect(self, assignment: Assignment) -> EdgeConnection:
        if unverified_claims(assignment.token).session != assignment.session_id:
            raise PermissionDenied("the session token does not name the assigned session")
        cred, address, token = self.credential, assignment.edge_address, assignment.token
        if self.insecure:
            conn = EdgeConnection(address, insecure=True, token=token)
        elif cred.certificate_pem and cred.key_pem and cred.ca_pem:
            ca, cert, key = cred.ca_pem.encode(), cred.certificate_pem.encode(), cred.key_pem.encode()
            conn = EdgeConnection(address, ca=ca, cert=cert, key=key, token=token)
        else:
            raise FailedPrecondition(
                "the device credential has no client certificate, key and CA for mutual TLS: re-enroll "
                "with a control plane that has --certs-dir (or use insecure=True for a local experiment)"
            )
        try:
            conn.wait_ready(self.connect_timeout)
        except BaseException:
            conn.close()
            raise
        return conn

    @staticmethod
    def _build_model(model_dir: Path, conn: EdgeConnection, spec: JobSpec) -> SplitModel:
        return SplitModel.from_pretrained(
            model_dir,
            edge=conn,
            model=spec.model,
            device_layers=spec.device_layers,
            head_layers=spec.head_layers,
            method=method_config(spec),
            trunk_lora=spec.trunk_lora,
            codec=spec.codec,
            config_overrides={"num_labels": spec.num_labels} if spec.num_labels is not None else None,
        )

    def _calibrate(self, model: SplitModel, tokenizer: Any, spec: JobSpec, seed: int) -> None:
        """Select what trains on a few local batches: TaskEdge scores texts only (labels are dropped
        inside calibrate); TinyTrain's support set is labelled, and the labels stay here."""
        if spec.method == "tinytrain":
            count = (spec.tinytrain or TinyTrainSpec()).calibration_batches
        else:
            count = (spec.taskedge or TaskEdgeSpec()).calibration_batches
        batches = []
        for texts, labels in training_batches(self.examples, spec.batch_size, seed=seed, epochs=1):
            enc = tokenizer(
                texts, padding=True, truncation=True, max_length=spec.max_length, return_tensors="pt"
            )
            batches.append(
                {
                    "input_ids": enc["input_ids"],
                    "attention_mask": enc["attention_mask"],
                    "labels": torch.tensor(labels),
                }
            )
            if len(batches) == count:
                break
        selected = model.calibrate(batches)
        logger.info(
            "%s selected %d device and %d trunk entries", spec.method, selected["device"], selected["trunk"]
        )

    def _check_labels(self, model: SplitModel) -> None:
        num_labels = int(getattr(model.config, "num_labels", 0))
        if max(e.label for e in self.examples) >= num_labels:
            raise InvalidArgument(
                f"the local data has labels >= num_labels ({num_labels}) of the job's model"
            )

    def _fit(self, model: SplitModel, tokenizer: Any, assignment: Assignment, seed: int) -> None:
        spec, sid = assignment.spec, assignment.session_id
        optimizer = make_optimizer(model, spec.optimizer)
        total = total_steps(spec, len(self.examples))
        scheduler = make_scheduler(optimizer, spec.schedule, total)
        batches = training_batches(self.examples, spec.batch_size, seed=seed, epochs=spec.epochs)
        window = _Window()
        model.train()
        logger.info("training session %s: %d steps on %d examples", sid, total, len(self.examples))
        for step, (texts, labels) in enumerate(itertools.islice(batches, total), start=1):
            if self._stop.is_set():
                raise FailedPrecondition(f"the device agent was stopped at step {step - 1} of {total}")
            loss = self._step(model, optimizer, tokenizer, texts, labels, spec)
            scheduler.step()
            if not math.isfinite(loss):
                raise FailedPrecondition(f"the loss became {loss} at step {step}")
            window.add(loss, len(texts))
            if self.progress is not None:
                self.progress(TrainingProgress(sid, step, total, loss))
            if step % self.metrics_every == 0 or step == total:
                self._send_metrics(sid, window.point(step, model))

    @staticmethod
    def _step(
        model: SplitModel,
        optimizer: torch.optim.Optimizer,
        tokenizer: Any,
        texts: list[str],
        labels: list[int],
        spec: JobSpec,
    ) -> float:
        enc = tokenizer(texts, padding=True, truncation=True, max_length=spec.max_length, return_tensors="pt")
        out = model(
            input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], labels=torch.tensor(labels)
        )
        out.loss.backward()
        if spec.clip_grad_norm is not None:
            optimizer.clip_grad_norm_(spec.clip_grad_norm)  # type: ignore[attr-defined]  # SplitOptimizer
        optimizer.step()
        optimizer.zero_grad()
        return float(out.loss.item())

    def _send_metrics(self, session_id: str, point: dict[str, Any]) -> None:
        """Metrics are best effort while the control plane is down: keep them and resend later."""
        self._pending = [*self._pending, point][-MAX_PENDING_POINTS:]
        try:
            self.client.report_metrics(session_id, self._pending)
        except Unavailable as exc:
            logger.warning("metrics for session %s kept for later: %s", session_id, exc.message)
            return
        self._pending = []


# --- CLI glue ------------------------------------------------------------------------------------


def parse_model_dirs(values: Sequence[str]) -> dict[str, Path]:
    """`--model-dir NAME=DIR` or `--model-dir DIR` (named by its base name), as the edge takes them."""
    out: dict[str, Path] = {}
    for value in values:
        name, sep, path = value.partition("=")
        directory = Path(path if sep else value)
        name = name if sep else directory.name
        if not name or not directory.is_dir():
            raise NotFound(f"--model-dir {value!r}: no such directory")
        if name in out:
            raise InvalidArgument(f"--model-dir names model {name!r} twice")
        out[name] = directory
    if not out:
        raise InvalidArgument("give at least one --model-dir")
    return out


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
    ) as agent:
        return agent.run(max_sessions=max_sessions, stop=stop)
