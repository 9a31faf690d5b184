"""The size and documentation rules of STYLE.md, checked over the source tree with `ast`.

No file over 400 lines and no function over 60 lines (generated protobuf code and database
migrations excepted); docstrings on the public functions, methods and classes of the edge server
and the control plane, kept at or above a floor so that new undocumented code fails here.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SOURCE_DIRS = ("splitft", "device_client", "edge_server", "services")
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60
DOCSTRING_DIRS = ("edge_server", "services")
DOCSTRING_FLOOR = 1.0  # every public definition outside PENDING_DOCSTRINGS is documented
# Files allowed below the floor (none now: every public definition of edge_server and services is
# documented).
PENDING_DOCSTRINGS: frozenset[str] = frozenset()
PENDING_FLOOR = 0.9  # the whole of DOCSTRING_DIRS, the pending files included


Definition = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef


def _excluded(relative: Path) -> bool:
    """Generated protobuf modules and Alembic migrations are not written by hand."""
    return "_pb2" in relative.name or relative.parts[:2] == ("services", "migrations")


def _sources(root: Path, dirs: tuple[str, ...]) -> Iterator[tuple[Path, Path]]:
    """(path, path relative to `root`) of each hand-written Python file under `dirs`."""
    for top in dirs:
        for path in sorted((root / top).rglob("*.py")):
            if not _excluded(path.relative_to(root)):
                yield path, path.relative_to(root)


def _functions(tree: ast.AST) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node


def _length(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from the first decorator (or the `def`) to the last line of the body."""
    first = min([node.lineno] + [d.lineno for d in node.decorator_list])
    return (node.end_lineno or node.lineno) - first + 1


def size_offenders(dirs: tuple[str, ...] = SOURCE_DIRS, root: Path = ROOT) -> list[str]:
    """Every file over MAX_FILE_LINES and function over MAX_FUNCTION_LINES, as 'path[:line name]: n'."""
    offenders = []
    for path, relative in _sources(root, dirs):
        text = path.read_text()
        lines = len(text.splitlines())
        if lines > MAX_FILE_LINES:
            offenders.append(f"{relative}: {lines} lines (file)")
        for func in _functions(ast.parse(text)):
            length = _length(func)
            if length > MAX_FUNCTION_LINES:
                offenders.append(f"{relative}:{func.lineno} {func.name}: {length} lines")
    return offenders


def _public_definitions(tree: ast.Module) -> Iterator[Definition]:
    """Module-level functions and classes, and the methods of classes, whose names are public.

    Nested functions are implementation details; dunder methods (`__init__`, `__call__`...) are
    documented by their class."""
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            if node.name.startswith("_"):
                continue
            yield node
            if isinstance(node, ast.ClassDef):
                for member in node.body:
                    if isinstance(member, ast.FunctionDef | ast.AsyncFunctionDef):
                        if not member.name.startswith("_"):
                            yield member


def docstring_report(
    *, skip: frozenset[str] = frozenset(), dirs: tuple[str, ...] = DOCSTRING_DIRS, root: Path = ROOT
) -> tuple[int, list[str]]:
    """(public definitions, the undocumented ones as 'path:line name') over `dirs`, leaving out
    the files in `skip` (paths relative to `root`)."""
    total, missing = 0, []
    for path, relative in _sources(root, dirs):
        if relative.as_posix() in skip:
            continue
        for node in _public_definitions(ast.parse(path.read_text())):
            total += 1
            if ast.get_docstring(node) is None:
                missing.append(f"{relative}:{node.lineno} {node.name}")
    return total, missing


@pytest.mark.parametrize("top", SOURCE_DIRS)
def test_no_file_over_400_lines_and_no_function_over_60(top: str) -> None:
    assert len(list(_sources(ROOT, (top,)))) >= 5  # the walk found the package
    offenders = size_offenders((top,))
    assert not offenders, "over the size limits (split by concern):\n" + "\n".join(offenders)


def _check_floor(total: int, missing: list[str], floor: float) -> None:
    coverage = 1 - len(missing) / total
    assert coverage >= floor, (
        f"docstring coverage {coverage:.1%} ({total - len(missing)} of {total}) is under the floor "
        f"{floor:.0%}; undocumented:\n" + "\n".join(missing)
    )


def test_public_definitions_of_the_edge_and_control_plane_are_documented() -> None:
    total, missing = docstring_report(skip=PENDING_DOCSTRINGS)
    _check_floor(total, missing, DOCSTRING_FLOOR)


def test_docstring_coverage_with_the_files_being_rewritten_stays_over_its_floor() -> None:
    total, missing = docstring_report()
    _check_floor(total, missing, PENDING_FLOOR)


def test_the_checker_finds_long_files_long_functions_and_missing_docstrings(tmp_path: Path) -> None:
    """The walk itself must find what it looks for, or the tests above could never fail."""
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    (tmp_path / "pkg").mkdir()
    (tmp_path / "services" / "migrations").mkdir(parents=True)
    (tmp_path / "services" / "migrations" / "0001_long.py").write_text("x = 1\n" * (MAX_FILE_LINES + 1))
    (tmp_path / "pkg" / "code.py").write_text(
        f"@staticmethod\ndef long():\n{body}\n\n\nclass Public:\n    def method(self):\n        pass\n"
        '\n    def _private(self):\n        pass\n\n\ndef documented():\n    """Says why."""\n'
    )
    (tmp_path / "pkg" / "big.py").write_text("x = 1\n" * (MAX_FILE_LINES + 1))
    (tmp_path / "pkg" / "fine.py").write_text("x = 1\n" * MAX_FILE_LINES)
    (tmp_path / "pkg" / "big_pb2.py").write_text("x = 1\n" * (MAX_FILE_LINES + 1))  # generated
    assert size_offenders(("pkg", "services"), root=tmp_path) == [
        f"pkg/big.py: {MAX_FILE_LINES + 1} lines (file)",
        f"pkg/code.py:2 long: {MAX_FUNCTION_LINES + 2} lines",  # its decorator counts
    ]
    total, missing = docstring_report(dirs=("pkg",), root=tmp_path)
    public = MAX_FUNCTION_LINES + 5  # the line of `class Public`
    assert (total, missing) == (
        4,
        ["pkg/code.py:2 long", f"pkg/code.py:{public} Public", f"pkg/code.py:{public + 1} method"],
    )
    assert docstring_report(dirs=("pkg",), root=tmp_path, skip=frozenset({"pkg/code.py"})) == (0, [])
