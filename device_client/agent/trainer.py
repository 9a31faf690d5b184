"""One session end to end on the device: dial the edge, build the split model, train, pack the adapter.

A `SessionTrainer` turns an `Assignment` into the adapter archive /complete takes. Metrics go to the
control plane every few steps (best effort while it is down). Randomness follows `splitft.jobs.seeds`:
the initialisation from the job's seed, data order and dropout from (job seed, device, round), so a
rerun of the same job on the same data trains identically.
"""

from __future__ import annotations

import itertools
import logging
import math
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from device_client.agent.archive import pack_adapter, unpack_adapter
from device_client.agent.assignment import method_config, schedule_span, total_steps
from device_client.agent.control_client import ControlPlaneClient
from device_client.agent.credentials import DeviceCredential
from device_client.agent.datasets import TextExample, training_batches
from device_client.agent.metrics_buffer import MetricsBuffer, MetricsWindow
from device_client.agent.progress import ProgressLog
from device_client.agent.resume import (
    SessionInterrupted,
    closing,
    has_checkpoint,
    open_resumed,
    resume_and_checkpoint,
)
from device_client.connection import EdgeConnection
from device_client.model import SplitModel
from device_client.offsite import OffsiteModel
from device_client.optim import make_scheduler
from device_client.retry import RetryPolicy
from splitft.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, Unavailable
from splitft.jobs.seeds import device_seed, job_seed
from splitft.jobs.spec import Assignment, JobCreate, OptimizerSpec
from splitft.model.loading import read_config
from splitft.plan.candidates import PRECISION_SDK
from splitft.security.tokens import check_session_id, unverified_claims
from splitft.wire.serde import EDGE_OPTIMIZERS

logger = logging.getLogger(__name__)
RECORD_EXAMPLES = 8  # local examples whose evaluation logits a recorded session keeps
SEQ_CLS_MAPPING = "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES"  # families the agent can train
OPTIMIZERS = {name: getattr(torch.optim, name) for name in EDGE_OPTIMIZERS}  # what the edge can run too
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "tokenizer.model")


def make_optimizer(model: SplitModel, spec: OptimizerSpec) -> torch.optim.Optimizer:
    """The job's optimizer over the device's trainable parameters (and the trunk adapter's, on the edge)."""
    cls = OPTIMIZERS.get(spec.name)
    if cls is None:
        raise InvalidArgument(f"unknown optimizer {spec.name!r} (one of {', '.join(OPTIMIZERS)})")
    return model.configure_optimizer(cls, lr=spec.lr, weight_decay=spec.weight_decay)


@dataclass(frozen=True)
class TrainingProgress:
    """Handed to the progress callback after every optimizer step."""

    session_id: str
    step: int  # optimizer steps done, 1-based
    total_steps: int
    loss: float


def load_tokenizer(model_dir: Path) -> Any:
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


@dataclass
class TrainerOptions:
    """How a device trains its sessions (see `DeviceAgent` for each knob)."""

    metrics_every: int = 10
    progress: Callable[[TrainingProgress], None] | None = None
    tokenizer_loader: Callable[[Path], Any] = load_tokenizer
    insecure: bool = False
    connect_timeout: float = 30.0
    record_dir: Path | None = None
    checkpoint_root: Path | None = None  # the job's checkpoints go under it, one directory per session
    edge_retry: RetryPolicy | None = None  # the SDK's retries of calls to the edge (None: its default)


class SessionTrainer:
    """Trains one assignment at a time on this device's examples and returns the packed adapter.

    `stop` is checked before every step: once set, the session ends with FailedPrecondition.
    """

    def __init__(
        self,
        credential: DeviceCredential,
        model_dirs: Mapping[str, Path],
        examples: list[TextExample],
        client: ControlPlaneClient,
        options: TrainerOptions,
    ) -> None:
        self.credential = credential
        self.model_dirs = dict(model_dirs)
        self.examples = examples
        self.client = client
        self.options = options
        self.metrics = MetricsBuffer()  # this session's points not acknowledged yet

    def train(self, assignment: Assignment, stop: threading.Event) -> bytes:
        """Train `assignment` end to end; the adapter as the .tar.gz that /complete takes."""
        spec = assignment.spec
        self.metrics = MetricsBuffer()
        model_dir = self._model_dir(spec)
        tokenizer = self.options.tokenizer_loader(model_dir)
        # splitft.jobs.seeds: the init follows the job (every device of a job starts from the same
        # adapter, independent or federated); data order and dropout follow (job, device, round).
        init_seed = job_seed(spec.seed, assignment.job_id)
        seed = device_seed(init_seed, self.credential.device_name, assignment.round)
        checkpoints = self._checkpoint_dir(assignment)
        resume_from = checkpoints if checkpoints is not None and has_checkpoint(checkpoints) else None
        # The control plane's part before the edge's: in there an Unavailable is the edge's (resume.py).
        initial = None
        if assignment.initial_adapter and resume_from is None:
            try:
                initial = self.client.initial_adapter(assignment.session_id)
            except Unavailable as exc:  # the same assignment comes back at a later poll
                raise SessionInterrupted(assignment.session_id, "the control plane is unreachable") from exc
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)  # the edge session's seed, the adapters' and the head's init
            with self._session_model(assignment, model_dir, resume_from) as model:
                if model.resumed is None:  # a resumed model has its state, RNG included
                    torch.manual_seed(seed)  # after the common init: this device's own dropout
                    if initial is not None:
                        self._start_from_global(model, assignment.session_id, initial)
                    self._check_labels(model)
                    selection = spec.selection_spec()
                    if selection is not None:  # a selection method chooses what trains first
                        self._calibrate(model, tokenizer, spec, seed, selection.calibration_batches)
                self._fit(model, tokenizer, assignment, seed, stop, checkpoints)
                if self.options.record_dir is not None:
                    self._record(model, tokenizer, assignment, self.options.record_dir)
                with tempfile.TemporaryDirectory(prefix="splitft-adapter-") as tmp:
                    model.save_adapter(tmp)
                    return pack_adapter(tmp)

    @contextmanager
    def _session_model(
        self, assignment: Assignment, model_dir: Path, resume_from: Path | None
    ) -> Iterator[Any]:
        """The session's model: split through the assigned edge, or (an offsite job) the device's
        adapters on its emulator, in this process, with no connection at all."""
        spec = assignment.spec
        if spec.offsite is not None:
            overrides = {"num_labels": spec.num_labels} if spec.num_labels is not None else None
            with OffsiteModel.from_emulator(
                model_dir, lora_config=method_config(spec), config_overrides=overrides
            ) as model:
                yield model
            return
        with self._connect(assignment) as conn:
            with closing(
                self._open(model_dir, conn, spec, resume_from, assignment.shared_trunk_adapter)
            ) as split:
                yield split

    def _checkpoint_dir(self, assignment: Assignment) -> Path | None:
        """Where this session's checkpoints go, when its job asks for them (`resume.py`)."""
        root = self.options.checkpoint_root
        if root is None or assignment.spec.checkpoint_every is None:
            return None
        return root / check_session_id(assignment.session_id)

    def _open(
        self,
        model_dir: Path,
        conn: EdgeConnection,
        spec: JobCreate,
        resume_from: Path | None,
        shared: str | None,
    ) -> SplitModel:
        if resume_from is not None:  # never for a shared trunk adapter's session (the spec refuses it)
            return open_resumed(model_dir, conn, resume_from, self.options.edge_retry)
        return self._build_model(model_dir, conn, spec, shared, self.options.edge_retry)

    @staticmethod
    def _start_from_global(model: SplitModel, session_id: str, archive: bytes) -> None:
        """Load the adapter the control plane says this federated session starts from."""
        with tempfile.TemporaryDirectory(prefix="splitft-initial-") as tmp:
            model.load_adapter(unpack_adapter(archive, Path(tmp)))
        logger.info("session %s starts from the previous round's global adapter", session_id)

    def _record(self, model: SplitModel, tokenizer: Any, assignment: Assignment, record_dir: Path) -> None:
        """Keep what this device saw at the end: its adapter and its evaluation logits on a few local
        examples, so anyone can check the adapter served by the control plane reproduces them."""
        out = record_dir / check_session_id(assignment.session_id)
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

    def _model_dir(self, spec: JobCreate) -> Path:
        name = spec.offsite.emulator if spec.offsite is not None else spec.model  # offsite: the emulator's
        model_dir = self.model_dirs.get(name)
        if model_dir is None:
            known = ", ".join(sorted(self.model_dirs)) or "none"
            raise NotFound(f"this device has no local directory for model {name!r} (it has: {known})")
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
        if self.options.insecure:
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
            conn.wait_ready(self.options.connect_timeout)
        except BaseException:
            conn.close()
            raise
        return conn

    @staticmethod
    def _build_model(
        model_dir: Path,
        conn: EdgeConnection,
        spec: JobCreate,
        shared: str | None,
        retry: RetryPolicy | None = None,
    ) -> SplitModel:
        device_layers, head_layers = spec.layers  # an auto job's assignment has its point applied
        dtype, quantize = PRECISION_SDK[spec.precision]
        return SplitModel.from_pretrained(
            model_dir,
            edge=conn,
            model=spec.model,
            device_layers=device_layers,
            head_layers=head_layers,
            dtype=dtype,
            quantize=quantize,
            method=method_config(spec),
            trunk_lora=spec.trunk_lora,
            codec=spec.codec,
            config_overrides={"num_labels": spec.num_labels} if spec.num_labels is not None else None,
            batch_shape=(spec.batch_size, spec.max_length),
            shared_trunk_adapter=shared or "",  # a federated job's one trunk adapter per round
            retry=retry,
            privacy=spec.privacy.config() if spec.privacy is not None else None,
        )

    def _calibrate(self, model: SplitModel, tokenizer: Any, spec: JobCreate, seed: int, count: int) -> None:
        """Select what trains on `count` local labelled batches; the method decides what it uses (TaskEdge
        drops the labels inside calibrate, TinyTrain's support set keeps them), and labels stay here."""
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

    def _fit(
        self,
        model: SplitModel,
        tokenizer: Any,
        assignment: Assignment,
        seed: int,
        stop: threading.Event,
        checkpoints: Path | None,
    ) -> None:
        spec, sid = assignment.spec, assignment.session_id
        optimizer = model.optimizer if model.resumed is not None else make_optimizer(model, spec.optimizer)
        assert optimizer is not None  # restored by from_checkpoint
        total = total_steps(spec, len(self.examples))
        first, length = schedule_span(spec, assignment.round, total)
        scheduler = make_scheduler(optimizer, spec.schedule.name, spec.schedule.warmup_steps, length, first)
        start, batches = resume_and_checkpoint(model, scheduler, spec, self.examples, seed, checkpoints)
        window, log = MetricsWindow(), ProgressLog(sid, start, total)
        model.train()
        logger.info(
            "training session %s: steps %d to %d on %d examples", sid, start + 1, total, len(self.examples)
        )
        for step, (texts, labels) in enumerate(itertools.islice(batches, total - start), start=start + 1):
            if stop.is_set():
                raise FailedPrecondition(f"the device agent was stopped at step {step - 1} of {total}")
            loss = self._step(model, optimizer, tokenizer, texts, labels, spec)
            scheduler.step()
            if not math.isfinite(loss):
                raise FailedPrecondition(f"the loss became {loss} at step {step}")
            window.add(loss, len(texts))
            log.step(step, loss, len(texts))
            if self.options.progress is not None:
                self.options.progress(TrainingProgress(sid, step, total, loss))
            if step % self.options.metrics_every == 0 or step == total:
                self._send_metrics(sid, window.point(step, model))

    @staticmethod
    def _step(
        model: SplitModel,
        optimizer: torch.optim.Optimizer,
        tokenizer: Any,
        texts: list[str],
        labels: list[int],
        spec: JobCreate,
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
        """Metrics are best effort while the control plane is down: kept and sent later
        (`metrics_buffer.py`); the agent flushes what is left before the upload."""
        self.metrics.add(point)
        self.metrics.send(lambda points: self.client.report_metrics(session_id, points))
