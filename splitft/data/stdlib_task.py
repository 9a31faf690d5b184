"""A small real text-classification task built at run time from the Python standard library.

Each example is the first paragraph of a docstring of a public function, class or method of a
standard-library package; its label is the package it belongs to. Nothing of the text is stored in
the repository: the task is rebuilt from the running interpreter's own standard library, so it
needs no download and no data file.

The build is deterministic: for one Python version it gives the same examples and the same
train/held-out split whatever ``PYTHONHASHSEED`` or the order in which modules were imported.
Texts are collected into sets and sorted, classes are capped by taking the texts with the lowest
SHA-256 ranks, and the held-out part of each class is chosen by a second, independent SHA-256 rank.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import logging
import pkgutil
import random
import re
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import ModuleType

logger = logging.getLogger(__name__)

DEFAULT_PACKAGES: tuple[str, ...] = ("asyncio", "email", "logging", "xml")
"""Present in every CPython 3.10-3.13 build; each yields about 145-180 distinct docstrings."""

DEFAULT_MAX_PER_CLASS = 150
DEFAULT_HELDOUT_FRACTION = 0.2
MIN_TEXT_CHARS = 30
MAX_TEXT_CHARS = 400
MIN_EXAMPLES_PER_PACKAGE = 10

_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")


@dataclass(frozen=True)
class Example:
    """One docstring paragraph and the index of its package in ``TextTask.labels``."""

    text: str
    label: int


@dataclass(frozen=True)
class TextTask:
    """A labelled text-classification task split into disjoint train and held-out parts."""

    labels: tuple[str, ...]
    train: tuple[Example, ...]
    heldout: tuple[Example, ...]

    @property
    def num_labels(self) -> int:
        """Number of classes (the size of a classifier head for this task)."""
        return len(self.labels)


def build_stdlib_task(
    packages: Sequence[str] = DEFAULT_PACKAGES,
    *,
    max_per_class: int = DEFAULT_MAX_PER_CLASS,
    heldout_fraction: float = DEFAULT_HELDOUT_FRACTION,
) -> TextTask:
    """Build the docstring-to-package task for ``packages`` (label ``i`` is ``packages[i]``).

    Every class keeps at most ``max_per_class`` texts and puts about ``heldout_fraction`` of them,
    at least one, in the held-out split and the rest, at least one, in the train split. Raises
    ValueError for an empty or repeated package list, a package that is not an importable
    standard-library package, a package yielding fewer than ``MIN_EXAMPLES_PER_PACKAGE`` texts,
    ``max_per_class < 2`` or a fraction outside (0, 1).
    """
    labels = _validate_arguments(packages, max_per_class, heldout_fraction)
    per_package = {name: _package_texts(name) for name in labels}
    unique = _drop_shared_texts(per_package)
    train: list[Example] = []
    heldout: list[Example] = []
    for label, name in enumerate(labels):
        texts = unique[name]
        if len(texts) < MIN_EXAMPLES_PER_PACKAGE:
            raise ValueError(
                f"package {name!r} yields {len(texts)} distinct docstrings, "
                f"fewer than the {MIN_EXAMPLES_PER_PACKAGE} needed"
            )
        kept = _cap(texts, max_per_class)
        class_train, class_heldout = _split(kept, heldout_fraction)
        train.extend(Example(text, label) for text in class_train)
        heldout.extend(Example(text, label) for text in class_heldout)
        logger.debug(
            "%s: %d texts, %d train, %d held out", name, len(texts), len(class_train), len(class_heldout)
        )
    logger.info(
        "stdlib task over %s: %d train and %d held-out examples", ", ".join(labels), len(train), len(heldout)
    )
    return TextTask(labels=labels, train=_sorted(train), heldout=_sorted(heldout))


def batches(
    examples: Sequence[Example], batch_size: int, *, shuffle_seed: int | None = None
) -> Iterator[tuple[list[str], list[int]]]:
    """Yield ``(texts, labels)`` batches covering ``examples`` once; the last one may be smaller.

    Without ``shuffle_seed`` the examples keep their order; with one they are shuffled by
    ``random.Random(shuffle_seed)``, the same way on every run.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    order = list(range(len(examples)))
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(order)
    for start in range(0, len(order), batch_size):
        chunk = [examples[i] for i in order[start : start + batch_size]]
        yield [example.text for example in chunk], [example.label for example in chunk]


def validation_split(
    examples: Sequence[Example], fraction: float
) -> tuple[tuple[Example, ...], tuple[Example, ...]]:
    """Split train ``examples`` into ``(train, validation)``: about ``fraction`` of each class, at
    least one and never all, by a rank independent of the held-out split's, so that choices
    (learning rate, rounds) are made on validation and the held-out split stays a test split."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must lie strictly between 0 and 1, got {fraction!r}")
    train: list[Example] = []
    validation: list[Example] = []
    for label in sorted({example.label for example in examples}):
        members = [example for example in examples if example.label == label]
        if len(members) < 2:
            raise ValueError(f"class {label} has {len(members)} example(s): at least 2 needed to split")
        ordered = sorted(members, key=lambda example: (_rank(example.text, "validation"), example.text))
        held = min(max(1, int(len(ordered) * fraction + 0.5)), len(ordered) - 1)
        validation.extend(ordered[:held])
        train.extend(ordered[held:])
    return _sorted(train), _sorted(validation)


def package_texts(package: str) -> list[str]:
    """Every distinct cleaned docstring paragraph of ``package`` (an importable stdlib package),
    sorted; the same texts the task draws its examples from (``splitft.privacy`` uses other
    packages' texts as the public data a curious edge has)."""
    _check_package(package)
    return sorted(_package_texts(package))


def _validate_arguments(
    packages: Sequence[str], max_per_class: int, heldout_fraction: float
) -> tuple[str, ...]:
    """Check the arguments of ``build_stdlib_task``; return the package names as a tuple."""
    if isinstance(packages, str):
        raise ValueError(f"packages must be a sequence of package names, not the string {packages!r}")
    labels = tuple(packages)
    if not labels:
        raise ValueError("packages must name at least one standard-library package, got none")
    if len(set(labels)) != len(labels):
        raise ValueError(f"packages must not repeat a name, got {list(labels)}")
    if isinstance(max_per_class, bool) or not isinstance(max_per_class, int) or max_per_class < 2:
        raise ValueError(f"max_per_class must be an integer of at least 2, got {max_per_class!r}")
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must lie strictly between 0 and 1, got {heldout_fraction!r}")
    for name in labels:
        _check_package(name)
    for name in labels:
        for other in labels:
            if other.startswith(name + "."):
                raise ValueError(f"packages {name!r} and {other!r} overlap: one contains the other")
    return labels


def _check_package(name: str) -> None:
    """Raise ValueError unless ``name`` is an importable module of the standard library."""
    if not isinstance(name, str) or not name or name.startswith("_"):
        raise ValueError(f"package names must be non-empty public module names, got {name!r}")
    if name.split(".")[0] not in sys.stdlib_module_names:
        raise ValueError(f"package {name!r} is not part of the Python standard library")
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError) as exc:
        raise ValueError(f"package {name!r} cannot be imported: {exc}") from exc
    if spec is None:
        raise ValueError(f"package {name!r} is not installed in this Python")
    try:
        _import_quietly(name)
    except Exception as exc:  # any failure to import makes the package unusable
        raise ValueError(f"package {name!r} cannot be imported: {type(exc).__name__}: {exc}") from exc


def _import_quietly(name: str) -> ModuleType:
    """Import a module with deprecation warnings silenced (some stdlib modules emit them)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        return importlib.import_module(name)


# Modules that run a program when imported: `idlelib.idle` starts IDLE (it parses sys.argv, so
# under pytest it exits with a usage error; with a display it opens a window). They define nothing.
_SCRIPT_MODULES = frozenset({"idlelib.idle"})


def _module_names(package: str) -> list[str]:
    """Names of ``package`` and of its public, non-test, non-script submodules, sorted."""
    root = _import_quietly(package)
    names = {package}
    path = getattr(root, "__path__", None)
    if path is None:
        return sorted(names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        found = list(pkgutil.walk_packages(path, prefix=package + ".", onerror=_log_walk_error))
    for info in found:
        relative = info.name[len(package) + 1 :]
        if "test" in relative.lower() or any(part.startswith("_") for part in relative.split(".")):
            continue
        if info.name in _SCRIPT_MODULES:
            continue
        names.add(info.name)
    return sorted(names)


def _log_walk_error(name: str) -> None:
    """``walk_packages`` callback: a subpackage failed to import and is skipped."""
    logger.debug("skipping subpackage %s: import failed", name)


def _package_texts(package: str) -> set[str]:
    """Distinct cleaned docstring paragraphs of the public objects defined in ``package``."""
    texts: set[str] = set()
    for name in _module_names(package):
        try:
            module = _import_quietly(name)
        except Exception as exc:  # platform-specific modules fail to import; skip them
            logger.debug("skipping module %s: %s: %s", name, type(exc).__name__, exc)
            continue
        for obj in _public_objects(module, package):
            text = _clean_docstring(obj)
            if text is not None:
                texts.add(text)
    return texts


def _belongs_to(obj: object, package: str) -> bool:
    """Whether ``obj`` was defined in ``package`` or one of its submodules."""
    module = getattr(obj, "__module__", None)
    return isinstance(module, str) and (module == package or module.startswith(package + "."))


def _public_objects(module: ModuleType, package: str) -> Iterator[object]:
    """Public module-level functions and classes of ``package`` found in ``module``, with methods."""
    for attr, obj in sorted(vars(module).items()):
        if attr.startswith("_") or not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        if not _belongs_to(obj, package):
            continue
        yield obj
        if inspect.isclass(obj):
            yield from _public_methods(obj, package)


def _public_methods(cls: type, package: str) -> Iterator[object]:
    """Public functions, static methods and class methods defined in the body of ``cls``."""
    for attr, member in sorted(vars(cls).items()):
        if attr.startswith("_"):
            continue
        if isinstance(member, (staticmethod, classmethod)):
            member = member.__func__
        if inspect.isfunction(member) and _belongs_to(member, package):
            yield member


def _clean_docstring(obj: object) -> str | None:
    """First paragraph of the object's own docstring, whitespace collapsed, or None if unusable.

    Only a docstring written on the object itself counts: ``inspect.getdoc`` would otherwise
    inherit one from a base class, which may belong to another package.
    """
    if not isinstance(getattr(obj, "__doc__", None), str):
        return None
    doc = inspect.getdoc(obj)
    if not doc:
        return None
    paragraph = _PARAGRAPH_BREAK.split(doc.strip(), maxsplit=1)[0]
    text = " ".join(paragraph.split())
    if not MIN_TEXT_CHARS <= len(text) <= MAX_TEXT_CHARS:
        return None
    return text


def _drop_shared_texts(per_package: dict[str, set[str]]) -> dict[str, list[str]]:
    """Remove every text found under more than one package; return each package's texts sorted."""
    seen: dict[str, int] = {}
    for texts in per_package.values():
        for text in texts:
            seen[text] = seen.get(text, 0) + 1
    shared = {text for text, count in seen.items() if count > 1}
    if shared:
        logger.debug("dropping %d docstrings shared by several packages", len(shared))
    return {name: sorted(texts - shared) for name, texts in per_package.items()}


def _rank(text: str, purpose: str) -> str:
    """A stable pseudo-random rank of ``text``; different purposes give independent orders."""
    return hashlib.sha256(f"{purpose}\0{text}".encode()).hexdigest()


def _cap(texts: Sequence[str], max_per_class: int) -> list[str]:
    """The ``max_per_class`` texts of lowest rank (all of them when there are fewer)."""
    return sorted(texts, key=lambda text: (_rank(text, "cap"), text))[:max_per_class]


def _split(texts: Sequence[str], heldout_fraction: float) -> tuple[list[str], list[str]]:
    """Split ``texts`` (two or more) into train and held-out parts by an independent rank."""
    ordered = sorted(texts, key=lambda text: (_rank(text, "split"), text))
    held = min(max(1, int(len(ordered) * heldout_fraction + 0.5)), len(ordered) - 1)
    return sorted(ordered[held:]), sorted(ordered[:held])


def _sorted(examples: Sequence[Example]) -> tuple[Example, ...]:
    """Examples in a canonical order: by text, then label."""
    return tuple(sorted(examples, key=lambda example: (example.text, example.label)))
