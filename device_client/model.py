"""SplitModel: the device's half of a split Hugging Face model, trained with LoRA through peft.

The device holds the embeddings, blocks[0:k], blocks[L-j:L], the final norm and the head; the
trunk blocks[k:L-j] run on an edge server. Raw inputs and labels never leave the device.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict
from torch import nn

from device_client.adapter_load import (
    join_adapter_states,
    load_whole_adapter,
    save_peft_adapter,
    shared_marks,
)
from device_client.autograd import ForwardContext, TrunkEntry
from device_client.checkpoint import Checkpointer, ResumeInfo, Scheduler, write_model_checkpoint
from device_client.connection import EdgeConnection
from device_client.head_skip import attach_head_skip, head_skip_of, load_head_skip, save_head_skip
from device_client.hf_compat import HuggingFaceFacade, refuse_plain_trainer, signed_forward
from device_client.opening import (
    OpenedWith,
    SelectionConfig,
    device_lora_config,
    device_placement,
    num_layers_of,
    open_session_request,
    open_trunk,
    resolve_method,
    save_new_modules,
)
from device_client.optim import SplitOptimizer, make_split_optimizer
from device_client.pipeline import forward_backward
from device_client.privacy import PrivacyGuard, forward_or_warmup
from device_client.resume import resume
from device_client.retry import RetryPolicy
from device_client.selection import split_view
from device_client.trunk import RemoteTrunk
from splitft.compress import parse_codecs
from splitft.errors import FailedPrecondition, InvalidArgument
from splitft.methods.adapter import save_selected
from splitft.methods.registry import SplitMethod, method_for
from splitft.methods.sparse import sparse_state_dict
from splitft.methods.tinytrain.fisher import LossFn
from splitft.model.loading import MODEL_CONSTRUCTION_LOCK, LoadedSpan, device_view, load_span, read_config
from splitft.model.placement import CPU_FLOAT32, ResolvedPlacement, release_cuda_autograd
from splitft.model.spans import SplitSpec
from splitft.privacy.config import PrivacyConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SplitStats:
    bytes_sent: int  # serialized bytes this model's connection sent to the edge
    bytes_received: int
    steps: int  # optimizer steps taken
    forwards: int  # trunk forwards (training and inference)


class SplitModel(HuggingFaceFacade, nn.Module):
    """A Hugging Face model cut between this device and an edge server."""

    privacy: PrivacyConfig = PrivacyConfig()  # the defenses in force (docs/privacy.md)
    _guard: PrivacyGuard | None = None  # where they act (None: every defense is off)

    def __init__(
        self,
        span: LoadedSpan,
        peft_model: PeftModel | None,
        spec: SplitSpec,
        edge: EdgeConnection,
        trunk: RemoteTrunk,
        context: ForwardContext,
        model_name: str,
        method: SelectionConfig | None = None,
        overrides: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.peft_model = peft_model
        # A selection method trains the HF model's own (masked) weights: no peft wrapper.
        self.root = span.root if peft_model is None else None
        self.method = method
        self.split_method: SplitMethod | None = method_for(method) if method is not None else None
        self.calibrated = False
        self.selection_report: Any = None  # the method's report of its choice, after calibrate()
        self.new_parameters = span.new_parameters
        self._overrides = overrides or {}
        self.spec = spec
        self.model_dir = span.model_dir
        self.model_name = model_name
        self.config = span.config
        self.family = span.family
        self.placement = span.placement  # where the device's spans compute, in what dtype
        self._edge = edge
        self._trunk = trunk
        self._context = context
        self._optimizer: SplitOptimizer | None = None
        self.opened_with: OpenedWith | None = None  # from_pretrained's arguments, for checkpoints
        self.resumed: ResumeInfo | None = None  # set by from_checkpoint
        self._checkpointer: Checkpointer | None = None
        # forward takes the HF class's arguments; tools reading its signature see them (Trainer).
        self.forward = signed_forward(type(self).forward.__get__(self), self.hf_root)  # type: ignore[method-assign]

    @classmethod
    def from_pretrained(
        cls,
        model_dir: str | Path,
        *,
        edge: EdgeConnection,
        device_layers: int,
        head_layers: int = 0,
        lora_config: LoraConfig | None = None,
        trunk_lora: bool = True,
        codec: str | Mapping[str, str] = "raw",
        model: str | None = None,
        seed: int | None = None,
        config_overrides: dict[str, Any] | None = None,
        method: SelectionConfig | LoraConfig | None = None,
        stream: bool = True,
        batch_shape: tuple[int, int] | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        quantize: str = "none",
        retry: RetryPolicy | None = None,
        shared_trunk_adapter: str = "",
        adapter: str | Path | None = None,
        privacy: PrivacyConfig | Mapping[str, Any] | None = None,
    ) -> SplitModel:
        """Load the device spans of `model_dir`, open a session on `edge`, and attach LoRA.

        `model`: the model's name on the edge (default: the directory's name). `seed` seeds the trunk adapter
        (default: torch's global RNG). `config_overrides`: device-side config fields. `codec`: one for both
        directions ("raw", "fp16", "bf16", "int8", "int8:sr") or one per direction, e.g. `{"activations":
        "int8", "gradients": "topk:0.01"}` (`splitft.compress`). `stream=False`: one unary call per tensor.
        `retry`: the calls' `RetryPolicy` (past its budget: `EdgeUnreachable`; docs/resilience.md).
        `batch_shape` (rows, tokens): the edge's memory reservation per batch (default 16 x 128). `device`
        ("cpu", "cuda", "cuda:N", "mps", "auto"), `dtype` ("float32", "bfloat16", "float16"): the device
        spans' (adapters stay float32; each side casts what arrives). `quantize` ("none", "int8", "nf4"): the
        device blocks' frozen linear weights (LoRA only). `method`: a `peft.LoraConfig` (as `lora_config`) or
        a selection method's config (docs/methods.md; `calibrate(batches)` first). `shared_trunk_adapter`: a
        federated job's shared trunk adapter to join (docs/federated.md). `adapter`: a peft LoRA adapter
        directory to start from. `privacy`: a PrivacyConfig or its fields (docs/privacy.md)."""
        lora_config, selection = resolve_method(lora_config, method, adapter)
        codecs, privacy = parse_codecs(codec), PrivacyConfig.for_split(privacy, trunk_lora)  # bad: refused
        placement = device_placement(device, dtype, quantize, selection)  # refused before a session opens
        config, _family = read_config(model_dir)
        spec = SplitSpec(num_layers_of(config), device_layers, head_layers)
        seed = int(torch.randint(0, 2**62, (1,)).item()) if seed is None else int(seed)
        name, trunk_config = model or Path(model_dir).name, lora_config if trunk_lora else None
        opened = OpenedWith(
            str(model_dir), name, device_layers, head_layers, lora_config, trunk_lora, str(codecs), seed,
            selection is not None, dict(config_overrides or {}), stream, batch_shape, device, dtype, quantize,
            shared_trunk_adapter, privacy.to_dict(),
        )  # fmt: skip
        request = open_session_request(opened, spec, config, codecs, trunk_config, selection, edge.token)
        trunk = open_trunk(edge, request, codecs, seed, stream=stream, retry=retry)
        try:
            device_config = device_lora_config(lora_config, model_dir) if lora_config is not None else None
            return cls._build(opened, spec, device_config, edge, trunk, selection, placement, adapter)
        except BaseException:
            trunk.close()
            release_cuda_autograd("device", placement.device)
            raise

    @classmethod
    def _build(
        cls,
        opened: OpenedWith,
        spec: SplitSpec,
        lora_config: LoraConfig | None,
        edge: EdgeConnection,
        trunk: RemoteTrunk,
        selection: SelectionConfig | None = None,
        placement: ResolvedPlacement = CPU_FLOAT32,
        adapter: str | Path | None = None,
    ) -> SplitModel:
        context = ForwardContext()
        guard = PrivacyGuard.for_fields(opened.privacy)  # None when every defense is off
        entry = TrunkEntry(trunk, context, guard)
        overrides = opened.config_overrides
        span = load_span(
            opened.model_dir,
            lambda root, family: device_view(root, family, spec.trunk_start, spec.trunk_stop, entry),
            init_missing=True,
            placement=placement,
            config_overrides=overrides,
            quantize=opened.quantize,
        )
        if lora_config is None:
            split = cls(span, None, spec, edge, trunk, context, opened.model, selection, overrides)
        else:
            lora_config = save_new_modules(lora_config, span.new_parameters)
            try:
                with MODEL_CONSTRUCTION_LOCK:
                    peft_model = get_peft_model(span.root, lora_config)
            except ValueError as exc:
                raise InvalidArgument(f"LoRA config does not fit the device blocks: {exc}") from exc
            split = cls(span, peft_model, spec, edge, trunk, context, opened.model)
        split.opened_with = opened
        first_blocks = list(span.family.blocks(span.root)[: spec.trunk_start])
        trunk_range = (spec.trunk_start, spec.trunk_stop)
        split._guard = guard
        split.privacy = (
            guard.watching(first_blocks, opened.model_dir, trunk_range) if guard else PrivacyConfig()
        )
        attach_head_skip(entry, split.privacy, span.config, placement.device)  # privacy.head_skip
        if adapter is not None:  # a peft adapter to continue (from_pretrained(adapter=...))
            split.load_adapter(adapter)
        return split

    def forward(self, **inputs: Any) -> Any:
        """Same inputs and outputs as the Hugging Face class (e.g. loss and logits)."""
        if self._trunk.closed:
            raise FailedPrecondition("this split model is closed")
        if self.training and torch.is_grad_enabled():
            refuse_plain_trainer(self._trunk.trainable)
        if self._checkpointer is not None:
            self._checkpointer.before_forward(self, self._trunk, self._optimizer)
        if "input_ids" in inputs or "inputs_embeds" in inputs:
            inputs.setdefault("use_cache", False)
        with self._context.forward(inputs.get("attention_mask")):
            return forward_or_warmup(self._net, inputs, self._guard)  # a private warm-up stops early

    @property
    def forward_context(self) -> ForwardContext:
        """What its forwards hand the trunk call beside the blocks' arguments (`autograd.ForwardContext`)."""
        return self._context

    def forward_backward(
        self,
        batch: Mapping[str, Any],
        *,
        micro_batches: int = 1,
        pipeline: bool = True,
        loss_fn: LossFn | None = None,
    ) -> float:
        """Forward and backward of one batch, cut into `micro_batches` slices along dim 0.

        Each slice's loss is scaled by its share of the samples, so gradients accumulate as for the
        whole batch with a per-sample-mean loss. With `pipeline` (the default), slice i+1's device
        blocks run while the edge works on slice i; the gradients equal `pipeline=False` exactly.
        Returns the batch's loss; step the optimizer afterwards as usual.
        """
        if self._checkpointer is not None:  # before the micro-batch threads start
            self._checkpointer.before_forward(self, self._trunk, self._optimizer)
        return forward_backward(self, batch, micro_batches=micro_batches, pipeline=pipeline, loss_fn=loss_fn)

    @property
    def _net(self) -> nn.Module:
        net = self.peft_model if self.peft_model is not None else self.root
        assert net is not None
        return net

    def calibrate(self, batches: Iterable[dict[str, Any]], loss_fn: LossFn | None = None) -> dict[str, int]:
        """Select what trains, on the device and the edge, from a few batches.

        TaskEdge scores labels-free batches (labels are dropped). TinyTrain runs its support set
        forward and backward, so its batches need labels (or pass `loss_fn(outputs, batch)`); the
        labels and the loss stay on the device, the edge sees activations and gradients only.
        The method's device half (its folder's `device.calibrate`, through the registry) does the
        work; returns its counts (e.g. entries selected on each side).
        """
        if self.method is None:
            raise FailedPrecondition("calibrate() is for selection methods; LoRA needs no calibration")
        if self.calibrated:
            raise FailedPrecondition("this split model is already calibrated")
        batches = list(batches)
        if not batches:
            raise InvalidArgument("calibrate() needs at least one batch")
        assert self.root is not None and self.split_method is not None
        calibrate = self.split_method.device_half()
        result = calibrate(
            split_view(self, self._trunk, self._context, self._overrides), batches, self.method, loss_fn
        )
        self.selection_report = result.report
        for name in self.new_parameters:  # a head the checkpoint lacks trains whole
            self.root.get_parameter(name).requires_grad_(True)
        self.calibrated = True
        return dict(result.summary)

    def configure_optimizer(
        self, optimizer_cls: type[torch.optim.Optimizer], **hparams: Any
    ) -> SplitOptimizer:
        """An optimizer over the device adapter that also steps the trunk adapter on the edge;
        `param_groups=`: torch param groups of this model's trainable parameters (default: one)."""
        if self.method is not None and not self.calibrated:
            raise FailedPrecondition(
                "call calibrate(batches) before configure_optimizer with a selection method"
            )
        trainable = [p for p in self.parameters() if p.requires_grad]
        groups = hparams.pop("param_groups", None) or [{"params": trainable}]
        trunk = self._trunk if self._trunk.trainable else None
        self._optimizer = make_split_optimizer(optimizer_cls, groups, trunk, **hparams)
        return self._optimizer

    @property
    def optimizer(self) -> SplitOptimizer | None:
        """The optimizer `configure_optimizer` (or `from_checkpoint`) built."""
        return self._optimizer

    def checkpoint(
        self, path: str | Path, *, scheduler: Scheduler | None = None, cursor: Any = None, keep: int = 1
    ) -> Path:
        """Write the whole training state under `path` (atomically, verified; the newest `keep`
        kept): both sides' adapters, optimizers and RNGs, `scheduler`'s state, the step count and
        your JSON `cursor`. Between optimizer steps. docs/resilience.md."""
        return write_model_checkpoint(
            self, self._trunk, self._optimizer, path, scheduler=scheduler, cursor=cursor, keep=keep
        )

    def checkpoint_every(self, steps: int, path: str | Path, **options: Any) -> Checkpointer:
        """Checkpoint under `path` before the first forward after every `steps`-th optimizer step;
        `options`: `scheduler`, `cursor` (a callable giving the JSON data cursor), `keep`."""
        if self.opened_with is None or self.opened_with.selection:
            raise FailedPrecondition("checkpoints cover LoRA split models (see checkpoint())")
        last = self.resumed.step if self.resumed is not None else None
        self._checkpointer = Checkpointer(Path(path), steps, last_step=last, **options)
        return self._checkpointer

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, edge: EdgeConnection, **options: Any) -> SplitModel:
        """Open a new session on `edge` from the newest checkpoint under `path` that verifies and
        restore everything `checkpoint` saved; `model.optimizer` is ready, `model.resumed` says
        where to continue. `options`: `model_dir`, `model_name` (the edge's name for the model),
        `optimizer_cls` (not in torch.optim), `restore_rng` (False: fresh randomness), `retry` (a
        `RetryPolicy`), `adapter` (these weights, not the saved ones; the rest of the state kept)."""
        return resume(cls, path, edge=edge, **options)

    def load_adapter(self, source: str | Path | Mapping[str, torch.Tensor]) -> None:
        """Start from a whole-model LoRA adapter (a directory `save_adapter` wrote, or its state
        dict): the device's keys into this model, the trunk's to the edge. Only before training;
        every key of both adapters must be given, with the same shapes."""
        if self.peft_model is None:
            raise FailedPrecondition("load_adapter is for LoRA split models (selection methods calibrate)")
        load_whole_adapter(self.peft_model, self._trunk, source, self.family.blocks_path, self.spec)
        if not isinstance(source, Mapping):  # a state dict is peft's alone: the head skip stays as it is
            load_head_skip(head_skip_of(self), Path(source))

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """The whole model's adapter weights: device modules and the trunk's, under peft's names
        (LoRA), or the sparse deltas of both sides (selection methods); on the CPU."""
        device = get_peft_model_state_dict(self.peft_model) if self.peft_model is not None else None
        if device is None:
            assert self.root is not None
            device = sparse_state_dict(self.root)
        return join_adapter_states(
            device, self._trunk.export_adapter(), self.hf_root, self.family.blocks_path, self.spec
        )

    def save_adapter(self, path: str | Path) -> Path:
        """Write ONE standard peft adapter (adapter_config.json + adapter_model.safetensors)."""
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        state = self.adapter_state_dict()
        if self.peft_model is None:
            assert self.root is not None
            head = {name: self.root.get_parameter(name) for name in self.new_parameters}
            assert self.split_method is not None
            meta = {"base_model": str(self.model_dir), "method": self.split_method.name}
            return save_selected(out, state, head, meta)
        marks = shared_marks(state, self.family.blocks_path, self.spec, self._trunk)  # {} unless shared
        save_head_skip(head_skip_of(self), out)  # the private map beside the adapter (privacy.head_skip)
        return save_peft_adapter(self.peft_model, state, self.model_dir, out, marks)

    @property
    def stats(self) -> SplitStats:
        wire = self._edge.stats
        return SplitStats(wire.bytes_sent, wire.bytes_received, self._trunk.steps, self._trunk.forwards)

    @property
    def session_id(self) -> str:
        return self._trunk.session_id

    def trainable_parameters(self) -> dict[str, int]:
        device = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return {"device": device, "trunk": self._trunk.trainable_parameters}

    def close(self) -> None:
        """Close the session on the edge (idempotent)."""
        if not self._trunk.closed:
            release_cuda_autograd("device", self.placement.device)
        self._trunk.close()

    def __enter__(self) -> SplitModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
