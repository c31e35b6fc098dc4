"""The shape ../shared/ARCHITECTURE.md asks for, checked on the source: which part imports which, and
no function longer than about 60 lines unless its docstring says why ("Long because ...")."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

KDLIB = Path(__file__).resolve().parents[1] / "kdlib"
BASE = {"errors", "atomic", "digest", "registry", "device", "layout", "locks", "stats"}  # shared utilities
ALLOWED = {  # part -> the parts it may import (besides itself and BASE)
    "params": set(),
    "data": {"params"},
    "models": {"params"},
    "losses": {"models", "params"},
    "train": {"data", "models", "losses", "params"},
    "dissect": {"data", "models", "params"},
    "metrics": {"data", "models", "params", "dissect"},
    "viz": {"data", "dissect", "params"},
    "runs": {"data", "models", "losses", "train", "dissect", "metrics", "viz", "params"},
}
BASE_ALLOWED = {"errors": set(), "atomic": set(), "digest": set(), "registry": {"errors"}, "device": {"errors"},
                "stats": {"errors"}, "locks": {"errors", "atomic"}, "layout": {"errors", "atomic", "digest", "params"}}


def _part(path: Path) -> str:
    rel = path.relative_to(KDLIB)
    return rel.parts[0].removesuffix(".py") if rel.parts[0] != "__init__.py" else "kdlib"


def _imported_parts(path: Path) -> set[str]:
    """Top-level kdlib parts imported anywhere in the file (function-local imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names if node.module == "kdlib"]
        for name in names:
            bits = name.split(".")
            if bits[0] == "kdlib" and len(bits) > 1:
                found.add(bits[1])
    return found


SOURCES = sorted(p for p in KDLIB.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=[str(p.relative_to(KDLIB)) for p in SOURCES])
def test_dependencies_point_one_way(path):
    part = _part(path)
    if part == "kdlib":
        return
    allowed = BASE_ALLOWED[part] if part in BASE_ALLOWED else ALLOWED[part] | BASE
    if path.name == "__main__.py":  # a command line is a thin tool over its part and may draw with viz
        allowed = allowed | {"viz"}
    bad = _imported_parts(path) - allowed - {part}
    assert not bad, f"kdlib.{part} ({path.name}) imports {sorted(bad)}; allowed: {sorted(allowed)}"


@pytest.mark.parametrize("path", SOURCES, ids=[str(p.relative_to(KDLIB)) for p in SOURCES])
def test_functions_are_short_or_say_why(path):
    long = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > 60 and "Long because" not in (ast.get_docstring(node) or ""):
                long.append(f"{node.name} ({length} lines)")
    assert not long, f"{path.relative_to(KDLIB)}: {', '.join(long)}; split them or say 'Long because ...' in the docstring"


def test_the_checks_see_a_violation(tmp_path):
    bad = tmp_path / "x.py"
    bad.write_text("def f():\n    from kdlib.train import fit\n")
    assert _imported_parts(bad) == {"train"}
