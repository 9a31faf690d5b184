"""Small files and small functions (STYLE.md): no file over 400 lines, no function over 60.

Checked over `splitft/` (the core and the tools); generated code (`*_pb2*.py`) is left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
CHECKED = [ROOT / "splitft"]
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60


def _sources() -> list[Path]:
    return sorted(p for root in CHECKED for p in root.rglob("*.py") if "_pb2" not in p.name)


def _long_functions(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            length = (node.end_lineno or node.lineno) - start + 1
            if length > MAX_FUNCTION_LINES:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_no_file_is_over_400_lines() -> None:
    sources = _sources()
    assert len(sources) > 50  # the walk found the package
    long = [
        f"{p.relative_to(ROOT)} ({n} lines)" for p in sources if (n := len(p.read_text().splitlines())) > 400
    ]
    assert not long, long


def test_no_function_is_over_60_lines() -> None:
    long = [entry for path in _sources() for entry in _long_functions(path)]
    assert not long, long
