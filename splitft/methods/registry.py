"""Selection methods by name, the way peft registers its tuners: one folder per method, one registry.

A method is a `SplitMethod`: its config class (torch-free, so the control plane can validate it),
the trunk's share of that config as it crosses the wire (`to_wire` / `from_wire`), its device half
(`calibrate`, run by `SplitModel.calibrate`) and its trunk half (`trunk_scorer`, a `TrunkScorer`
built per session by the edge). The two halves are given as `"module:attribute"` strings, imported
on first use, so that registering (and validating configs) never imports torch; a method defined in
one module (a test, a notebook) may give the objects themselves.

The built-in methods, `splitft.methods.taskedge` and `splitft.methods.tinytrain`, register
themselves when their package is imported; every lookup imports them first. LoRA is not a
selection method: it goes through peft (`peft.LoraConfig`).
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from splitft.errors import InvalidArgument

logger = logging.getLogger(__name__)

# (SplitView, batches, config, loss_fn) -> Calibrated; see splitft.methods.port.
DeviceCalibrate = Callable[..., Any]
# (trunk root module, trunk config from `from_wire`) -> TrunkScorer; see splitft.methods.scorer.
ScorerFactory = Callable[[Any, Any], Any]

BUILTIN_PACKAGES = ("splitft.methods.taskedge", "splitft.methods.tinytrain")


@dataclass(frozen=True)
class SplitMethod:
    """One selection method, both halves, registered under `name`."""

    name: str
    # The library config (a dataclass that validates itself in __post_init__), torch-free.
    config_cls: type
    # The trunk's share of a config as a JSON object (OpenSession's `method_json`, minus "method").
    to_wire: Callable[[Any], dict[str, Any]]
    # Those fields back into what the trunk half takes; InvalidArgument for anything it refuses.
    from_wire: Callable[[dict[str, Any]], Any]
    # The device half: "module:function" or the function itself.
    calibrate: str | DeviceCalibrate
    # The trunk half: "module:class" or a callable building a TrunkScorer.
    trunk_scorer: str | ScorerFactory
    # The whole config as a JSON object and back (REST job specs); None: the dataclass fields as-is.
    config_to_json: Callable[[Any], dict[str, Any]] | None = None
    config_from_json: Callable[[dict[str, Any]], Any] | None = None

    def device_half(self) -> DeviceCalibrate:
        """The device half, imported on first use."""
        return _resolve(self.calibrate)

    def trunk_half(self) -> ScorerFactory:
        """The trunk half's scorer factory, imported on first use."""
        return _resolve(self.trunk_scorer)

    def config_from(self, fields: dict[str, Any]) -> Any:
        """A validated config from a JSON object; InvalidArgument names what is wrong."""
        if not isinstance(fields, dict):
            raise InvalidArgument(f"a {self.name} config must be a JSON object")
        if self.config_from_json is not None:
            return self.config_from_json(fields)
        try:
            return self.config_cls(**fields)
        except TypeError as exc:
            raise InvalidArgument(f"invalid {self.name} config: {exc}") from None


_METHODS: dict[str, SplitMethod] = {}
_LOCK = threading.Lock()
_loaded = False


def _resolve(target: Any) -> Any:
    if not isinstance(target, str):
        return target
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


def _ensure_builtins() -> None:
    global _loaded
    if _loaded:
        return
    for package in BUILTIN_PACKAGES:  # each registers itself on import
        importlib.import_module(package)
    _loaded = True


def register_method(method: SplitMethod, *, replace: bool = False) -> SplitMethod:
    """Make `method` available by its name and by its config class; returns it.

    A second method under a taken name or config class is refused unless `replace`.
    """
    if not method.name or not method.name.isidentifier():
        raise InvalidArgument(f"a method name must be an identifier, got {method.name!r}")
    with _LOCK:
        taken = _METHODS.get(method.name)
        if taken is not None and taken != method and not replace:
            raise InvalidArgument(f"method {method.name!r} is already registered")
        clash = [m.name for m in _METHODS.values() if m.config_cls is method.config_cls]
        if clash and clash != [method.name] and not replace:
            raise InvalidArgument(f"{method.config_cls.__name__} already belongs to method {clash[0]!r}")
        _METHODS[method.name] = method
    logger.debug("registered selection method %s", method.name)
    return method


def unregister_method(name: str) -> None:
    """Forget a method (tests that register their own); unknown names are ignored."""
    with _LOCK:
        _METHODS.pop(name, None)


def method_names() -> tuple[str, ...]:
    """Every registered method's name, sorted (registration order depends on what was imported first)."""
    _ensure_builtins()
    with _LOCK:
        return tuple(sorted(_METHODS))


def get_method(name: str) -> SplitMethod:
    """The method registered under `name`; InvalidArgument lists the known ones."""
    _ensure_builtins()
    with _LOCK:
        method = _METHODS.get(name) if isinstance(name, str) else None
    if method is None:
        raise InvalidArgument(
            f"method {name!r} is not supported across the split; supported: {method_names()}"
        )
    return method


def method_for(config: Any) -> SplitMethod:
    """The method whose config class `config` is an instance of."""
    _ensure_builtins()
    with _LOCK:
        found = [m for m in _METHODS.values() if isinstance(config, m.config_cls)]
    if not found:
        raise InvalidArgument(
            f"method {type(config).__name__} cannot run across the split; supported: {method_names()}"
        )
    return found[0]
