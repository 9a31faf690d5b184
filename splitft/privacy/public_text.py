"""The public text a curious edge trains its decoders on: standard-library docstrings of packages the
device's task does not use (same kind of text, none of the same texts)."""

from __future__ import annotations

import hashlib
import logging
import sys
from collections.abc import Iterable, Sequence

from splitft.data.stdlib_task import DEFAULT_PACKAGES, package_texts

logger = logging.getLogger(__name__)

# Large, always-present stdlib packages, disjoint from the demo task's (asyncio, email, logging, xml).
PUBLIC_PACKAGES: tuple[str, ...] = (
    "collections",
    "concurrent",
    "ctypes",
    "http",
    "importlib",
    "json",
    "multiprocessing",
    "unittest",
    "urllib",
    "xmlrpc",
    "tkinter",
    "sqlite3",
    "argparse",
    "pathlib",
    "typing",
    "tarfile",
    "zipfile",
    "idlelib",
    "pydoc_data",
    "lib2to3",
)


def public_texts(
    *,
    exclude_packages: Sequence[str] = DEFAULT_PACKAGES,
    exclude_texts: Iterable[str] = (),
    limit: int = 4000,
) -> list[str]:
    """Up to `limit` docstring paragraphs of `PUBLIC_PACKAGES` (those this Python has), none from
    `exclude_packages` and none equal to a text of `exclude_texts`; a stable, hash-ranked choice."""
    excluded = set(exclude_texts)
    texts: set[str] = set()
    for package in PUBLIC_PACKAGES:
        if package in exclude_packages or package.split(".")[0] not in sys.stdlib_module_names:
            continue
        try:
            texts.update(package_texts(package))
        except ValueError as exc:  # absent in this build (tkinter without Tk, lib2to3 after 3.12)
            logger.debug("public text: skipping %s: %s", package, exc)
    kept = sorted(texts - excluded, key=lambda text: hashlib.sha256(text.encode()).hexdigest())
    logger.info("public text: %d docstrings available, %d kept", len(texts - excluded), min(limit, len(kept)))
    return kept[:limit]
