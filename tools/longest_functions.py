"""The longest functions in src/ (lines from `def` to the last line of the body):
`python tools/longest_functions.py [N]`. tests/test_layout.py keeps every one under MAX_LINES."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "upsample"
MAX_LINES = 120


def function_lengths(root: Path = SRC) -> list[tuple[int, str]]:
    """(lines, "path:line name") of every function and method under `root`, longest first."""
    rows = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                rows.append((node.end_lineno - node.lineno + 1,
                             f"{path.relative_to(root)}:{node.lineno} {node.name}"))
    return sorted(rows, reverse=True)


if __name__ == "__main__":
    for n, where in function_lengths()[:int(sys.argv[1]) if len(sys.argv) > 1 else 10]:
        print(f"{n:4d}  {where}")
