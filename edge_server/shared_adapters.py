"""One trunk adapter per job on its edge, stepped by every session of the job: federated jobs with
`trunk_adapter: "shared"` (SplitLoRA-style). docs/federated.md, "The shared trunk adapter".

- *Naming and authorisation.* A session joins with OpenSession's `shared_adapter` key, "<job id>" or
  "<job id>/<suffix>" (the control plane sends "<job id>/r<round>": one adapter per round). With
  session tokens the key's job must be the token's job (`authorize_shared_key`, PERMISSION_DENIED
  otherwise), so no session can reach another job's adapter. Sessions of one key must agree on
  the model, the trunk blocks and the LoRA config (FAILED_PRECONDITION naming what differs).
- *The adapter.* `SharedTrunkAdapter` keeps the peft adapter on a `TrunkSession` that never runs a
  forward (its `master`) together with its optimizer; each session computes on its own tree over
  the same parameters (`edge_server.shared_view`), with its own gradients.
- *Concurrency.* Loads, exports, optimizer configuration and steps of one adapter take its `lock`
  (per adapter: other jobs never wait for it); a step installs one session's gradients, steps and
  clears them, so steps of several sessions run one after the other in arrival order. Forwards take
  no lock: they compute with copies of the weights made when each layer runs.
- *Lifetime.* An adapter lives while sessions hold it, then lingers idle for the edge's session TTL
  (a device of the round that opens after the others closed still finds their updates), and is
  freed by the reaper, at once when its job creates another adapter (its next round's), or when
  the edge stops.
- *Memory.* The adapter's values and optimizer slots are counted once, under their own entry in the
  edge's accountant (`memory_entry`); each session counts its gradients and kept graphs.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from dataclasses import dataclass, fields
from typing import Any

import torch
from peft import LoraConfig
from torch import nn

from edge_server.admission import SHARED_ENTRY_PREFIX, MemoryAccountant
from edge_server.limits import DataPlaneLimits
from edge_server.session import TrunkSession
from edge_server.shared_view import SharedAdapterView
from splitft.errors import FailedPrecondition, InvalidArgument, PermissionDenied
from splitft.model.loading import LoadedSpan
from splitft.model.lora import trunk_lora_json
from splitft.model.spans import SplitSpec

logger = logging.getLogger(__name__)

_PART = r"[A-Za-z0-9._:-]"
SHARED_KEY = re.compile(rf"{_PART}{{1,128}}(/{_PART}{{1,64}})?")


def check_shared_key(key: str) -> str:
    """`key` if it names a shared adapter ("<job id>" or "<job id>/<suffix>"); else InvalidArgument."""
    if not SHARED_KEY.fullmatch(key) or job_of(key) in (".", ".."):
        raise InvalidArgument(
            'shared_adapter must be "<job id>" or "<job id>/<suffix>" (1-128, then 1-64 characters '
            "of [A-Za-z0-9._:-])"
        )
    return key


def job_of(key: str) -> str:
    """The job a shared adapter key belongs to (its part before "/")."""
    return key.partition("/")[0]


def authorize_shared_key(key: str, token_job: str) -> None:
    """PermissionDenied unless a session whose token names job `token_job` may join adapter `key`."""
    if not token_job:
        raise PermissionDenied(
            "a shared trunk adapter is joined under a session token that names its job; this one names none"
        )
    if job_of(key) != token_job:
        raise PermissionDenied(
            f"a session of job {token_job!r} may join only its own job's shared trunk adapter, not {key!r}"
        )


@dataclass(frozen=True)
class AdapterIdentity:
    """What every session of one shared adapter must agree on."""

    model: str
    trunk_start: int
    trunk_stop: int
    lora: str  # the trunk LoRA config as JSON (`splitft.model.lora.trunk_lora_json`)

    @classmethod
    def of(cls, model: str, spec: SplitSpec, lora_config: LoraConfig) -> AdapterIdentity:
        """The identity of a session opened with these arguments."""
        return cls(model, spec.trunk_start, spec.trunk_stop, trunk_lora_json(lora_config))

    def differs(self, other: AdapterIdentity) -> str | None:
        """The first field where `other` differs, as a message; None when they agree."""
        for field in fields(self):
            mine, theirs = getattr(self, field.name), getattr(other, field.name)
            if mine != theirs:
                return f"it holds {field.name}={mine!r}, this session asks for {theirs!r}"
        return None


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """A digest of a state dict's names, dtypes, shapes and values."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().to("cpu").contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


class SharedTrunkAdapter:
    """One shared trunk adapter: its parameters and optimizer (on `master`), its lock and its sessions."""

    def __init__(self, key: str, identity: AdapterIdentity) -> None:
        self.key = key
        self.identity = identity
        self.memory_entry = SHARED_ENTRY_PREFIX + key
        self.lock = threading.Lock()
        self.master: TrunkSession | None = None  # None until built (or when building failed)
        self.sessions = 0  # sessions holding it (the registry's lock guards this and idle_since)
        self.idle_since: float | None = None
        self.loaded: str | None = None  # digest of the state it was started from
        self.optimizer_name: str | None = None

    @property
    def built(self) -> TrunkSession:
        """The master session (FailedPrecondition if the adapter failed to build)."""
        if self.master is None:
            raise FailedPrecondition(f"the shared trunk adapter {self.key!r} could not be built")
        return self.master

    @property
    def root(self) -> nn.Module:
        """The master's module tree (the adapter's parameters live in it)."""
        return self.built.root

    @property
    def params(self) -> list[nn.Parameter]:
        """The adapter's trainable parameters."""
        return self.built.trainable

    @property
    def steps(self) -> int:
        """Optimizer steps taken, by every session."""
        return self.built.steps

    def check_optimizer(self, name: str) -> None:
        """FailedPrecondition when the adapter already steps with another optimizer than `name`."""
        current = self.optimizer_name
        if current is not None and name != current:
            raise FailedPrecondition(
                f"the shared trunk adapter {self.key!r} steps with {current}; this session asked for {name}"
            )

    def configure(self, name: str, hparams: dict[str, Any]) -> None:
        """Build the optimizer on the first call; later sessions must name the same one."""
        with self.lock:
            self.check_optimizer(name)
            if self.optimizer_name is None:
                self.built.optim.configure(name, hparams)
                self.optimizer_name = name

    def step(self, grads: list[torch.Tensor | None], hparams: dict[str, Any], grad_scale: float) -> int:
        """One optimizer step with one session's gradients (in `params` order); every session's steps."""
        master = self.built
        with self.lock:
            if self.optimizer_name is None:
                raise FailedPrecondition("step before ConfigureOptimizer")
            for param, grad in zip(master.trainable, grads, strict=True):
                param.grad = grad
            try:
                return master.optim.step(hparams, grad_scale, zero_grad_first=False)
            finally:
                for param in master.trainable:
                    param.grad = None

    def export(self) -> tuple[dict[str, torch.Tensor], int]:
        """The adapter's tensors (peft names) and the steps they include, read together."""
        master = self.built
        with self.lock:
            return master.export_adapter(), master.steps

    def load(self, state: dict[str, torch.Tensor]) -> int:
        """Start the adapter from `state` before it steps. The round's other sessions load the same
        global adapter: the same state again is accepted (and changes nothing), another is refused."""
        digest = state_digest(state)
        master = self.built
        with self.lock:
            if self.loaded == digest:
                return len(state)
            if self.loaded is not None or master.steps:
                done = "been started from another adapter" if self.loaded else f"taken {master.steps} steps"
                raise FailedPrecondition(
                    f"the shared trunk adapter {self.key!r} has already {done}; its sessions load the "
                    "same adapter before any of them steps"
                )
            loaded = master.load_adapter(state)
            self.loaded = digest
            return loaded

    def free(self) -> None:
        """Drop the adapter and its optimizer state."""
        with self.lock:
            if self.master is not None:
                self.master.release()


class SharedAdapters:
    """The edge's shared trunk adapters by key: join, leave, expire."""

    def __init__(self, limits: DataPlaneLimits, memory: MemoryAccountant | None = None) -> None:
        self.limits = limits
        self.memory = memory
        self._adapters: dict[str, SharedTrunkAdapter] = {}
        self._lock = threading.Lock()

    def has(self, key: str) -> bool:
        """Whether adapter `key` exists now (held or idle)."""
        with self._lock:
            return key in self._adapters

    def sessions(self, key: str) -> int | None:
        """How many sessions hold adapter `key` (None: no such adapter)."""
        with self._lock:
            adapter = self._adapters.get(key)
            return adapter.sessions if adapter is not None else None

    def count(self) -> int:
        """How many shared adapters exist."""
        with self._lock:
            return len(self._adapters)

    def join(
        self, key: str, model: str, span: LoadedSpan, spec: SplitSpec, lora_config: LoraConfig, seed: int
    ) -> SharedAdapterView:
        """A view of adapter `key` for a new session, building the adapter if it is the first (from
        `seed`); FailedPrecondition if the session does not fit the adapter."""
        identity = AdapterIdentity.of(model, spec, lora_config)
        stale: list[SharedTrunkAdapter] = []
        with self._lock:
            adapter = self._adapters.get(key)
            creating = adapter is None
            if adapter is None:
                stale = self._pop_idle(lambda a: job_of(a.key) == job_of(key))  # its earlier rounds
                adapter = self._adapters[key] = SharedTrunkAdapter(key, identity)
                adapter.lock.acquire()  # held until built: sessions joining meanwhile wait for it
            adapter.sessions += 1
            adapter.idle_since = None
        if creating:
            self._free(stale)
            self._build(adapter, span, spec, lora_config, seed)
        else:
            with adapter.lock:  # waits while another session builds it
                problem = adapter.identity.differs(identity) if adapter.master is not None else None
            if adapter.master is None or problem is not None:
                self._leave(adapter)
                reason = problem or "it could not be built"
                raise FailedPrecondition(f"cannot join the shared trunk adapter {key!r}: {reason}")
        return SharedAdapterView(adapter, lambda: self._leave(adapter))

    def _build(
        self,
        adapter: SharedTrunkAdapter,
        span: LoadedSpan,
        spec: SplitSpec,
        lora_config: LoraConfig,
        seed: int,
    ) -> None:
        """Build the adapter (its lock is held by the caller's `join`); on failure it is removed."""
        try:
            master = TrunkSession(
                SHARED_ENTRY_PREFIX + adapter.key, span, spec, lora_config, seed, limits=self.limits
            )
            if master.lora_layers is None:
                master.release()
                raise InvalidArgument("a shared trunk adapter is plain LoRA (no DoRA or other peft variant)")
            adapter.master = master
        except BaseException:
            with self._lock:
                if self._adapters.get(adapter.key) is adapter:
                    del self._adapters[adapter.key]
            raise
        finally:
            adapter.lock.release()
        logger.info("built shared trunk adapter %s: %d parameters", adapter.key, master.trainable_parameters)

    def _leave(self, adapter: SharedTrunkAdapter) -> None:
        """A session let go of `adapter`; the last one leaves it idle (the reaper frees it later)."""
        with self._lock:
            adapter.sessions -= 1
            if adapter.sessions == 0:
                adapter.idle_since = time.monotonic()
                if adapter.master is None and self._adapters.get(adapter.key) is adapter:
                    del self._adapters[adapter.key]

    def _pop_idle(self, chosen: Any) -> list[SharedTrunkAdapter]:
        """Remove the idle adapters `chosen(adapter)` picks; the caller holds `self._lock`."""
        doomed = [a for a in self._adapters.values() if a.sessions == 0 and chosen(a)]
        for adapter in doomed:
            del self._adapters[adapter.key]
        return doomed

    def _free(self, adapters: list[SharedTrunkAdapter]) -> None:
        for adapter in adapters:
            adapter.free()
            if self.memory is not None:
                self.memory.forget(adapter.memory_entry)
            logger.info("freed shared trunk adapter %s", adapter.key)

    def expire_idle(self, ttl_seconds: float) -> list[str]:
        """Free the adapters no session has held for `ttl_seconds`; returns their keys."""
        now = time.monotonic()
        with self._lock:
            doomed = self._pop_idle(lambda a: a.idle_since is not None and now - a.idle_since > ttl_seconds)
        self._free(doomed)
        return [adapter.key for adapter in doomed]

    def close_all(self) -> None:
        """Free every adapter (the edge stops)."""
        with self._lock:
            doomed, self._adapters = list(self._adapters.values()), {}
        self._free(doomed)
