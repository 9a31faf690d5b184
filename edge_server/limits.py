"""Data-plane resource bounds: what one request, one session and one device may take from the edge.

Every bound is an `edge serve` flag (README "Security"); the defaults fit the models splitft serves
on one edge while keeping one peer from exhausting memory, compute or gRPC slots for the others.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from peft import LoraConfig
from torch import nn

from splitft.errors import InvalidArgument, ResourceExhausted

DEFAULT_MAX_REQUEST_BYTES = 512 << 20  # all tensors of one request (payload and decoded size)
DEFAULT_MAX_SEQUENCE_LENGTH = 8192  # tokens per row of a forward
DEFAULT_MAX_BATCH_TOKENS = 1 << 17  # batch x sequence per forward
DEFAULT_MAX_ADAPTER_PARAMETERS = 1 << 27  # trainable trunk parameters per session (512 MiB as fp32)
DEFAULT_MAX_SESSIONS_PER_DEVICE = 4
DEFAULT_MAX_CALLS_PER_DEVICE = 8  # concurrent DataPlane calls (open Train streams included)
DEFAULT_MAX_CACHE_TOKENS = 1 << 15  # rows x tokens of one session's key/value cache (generate)


@dataclass(frozen=True)
class DataPlaneLimits:
    """Bounds on what one peer may ask of the edge."""

    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_sequence_length: int = DEFAULT_MAX_SEQUENCE_LENGTH
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS
    max_adapter_parameters: int = DEFAULT_MAX_ADAPTER_PARAMETERS
    max_sessions_per_device: int = DEFAULT_MAX_SESSIONS_PER_DEVICE
    max_calls_per_device: int = DEFAULT_MAX_CALLS_PER_DEVICE
    max_cache_tokens: int = DEFAULT_MAX_CACHE_TOKENS

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                flag = "--" + name.replace("_", "-")
                raise InvalidArgument(f"{flag} must be a positive integer, got {value!r}")

    def check_tokens(self, batch: int, tokens: int) -> None:
        """ResourceExhausted if a forward of `batch` rows of `tokens` tokens is above the bounds."""
        if tokens > self.max_sequence_length:
            raise ResourceExhausted(
                f"sequence length {tokens} exceeds this edge's limit {self.max_sequence_length} "
                "(--max-sequence-length)"
            )
        if batch * tokens > self.max_batch_tokens:
            raise ResourceExhausted(
                f"batch x tokens {batch * tokens} exceeds this edge's limit {self.max_batch_tokens} "
                "(--max-batch-tokens)"
            )


def _matches(name: str, filters: list[str] | set[str]) -> bool:
    # peft's rule for a list: a filter names a module exactly or as its last dotted components.
    return any(name == f or name.endswith("." + f) for f in filters)


def _name_list(filters: list[str] | set[str] | str | None, field: str) -> list[str]:
    # The trunk config was checked already (splitft.model.lora); a string here would be a regex to
    # peft and a sequence of characters to `_matches`, so refuse it rather than guess.
    if isinstance(filters, str):
        raise InvalidArgument(f"{field} must be a list of module names, not a string")
    return list(filters or [])


def lora_parameter_estimate(root: nn.Module, config: LoraConfig) -> int:
    """An upper bound on the parameters peft adds to `root` for `config` (no regexes: the trunk
    accepts only lists of module names), computed before any adapter memory is allocated."""
    targets = _name_list(config.target_modules, "target_modules")
    excludes = _name_list(config.exclude_modules, "exclude_modules")
    total = 0
    for name, module in root.named_modules():
        weight = getattr(module, "weight", None)
        if not isinstance(weight, nn.Parameter) or weight.dim() < 2 or not _matches(name, targets):
            continue
        if excludes and _matches(name, excludes):
            continue
        out_features, in_features = weight.shape[0], weight[0].numel()
        total += config.r * (in_features + out_features) + (out_features if config.use_dora else 0)
    return total


def check_adapter_size(parameters: int, limits: DataPlaneLimits) -> None:
    """ResourceExhausted if a session's trunk adapter is above the per-session parameter bound."""
    if parameters > limits.max_adapter_parameters:
        raise ResourceExhausted(
            f"the trunk adapter would have {parameters} trainable parameters; this edge allows at most "
            f"{limits.max_adapter_parameters} per session (--max-adapter-parameters)"
        )


class DeviceCallCounter:
    """Concurrent calls per device, so one device cannot take every gRPC slot."""

    def __init__(self, per_device: int) -> None:
        self.per_device = per_device
        self._calls: dict[str, int] = {}
        self._lock = threading.Lock()

    def acquire(self, device: str) -> None:
        """Count one more call for `device`; ResourceExhausted at its bound."""
        with self._lock:
            count = self._calls.get(device, 0)
            if count >= self.per_device:
                raise ResourceExhausted(
                    f"device {device!r} already has {count} concurrent calls on this edge; the limit is "
                    f"{self.per_device} (--max-calls-per-device)"
                )
            self._calls[device] = count + 1

    def release(self, device: str) -> None:
        """Count one call of `device` done (at zero its entry goes: the table holds active devices only)."""
        with self._lock:
            count = self._calls.get(device, 0) - 1
            if count > 0:
                self._calls[device] = count
            else:
                self._calls.pop(device, None)

    def count(self, device: str) -> int:
        """How many calls `device` has in flight now."""
        with self._lock:
            return self._calls.get(device, 0)
