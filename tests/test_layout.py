"""The two halves of the code stay apart: serving imports the model library in madx/, never the
offline half in madx/train/ (trainer, data, evaluation); and no module grows past 450 lines."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OFFLINE = "madx.train"
MAX_LINES = 450


def imported_modules(source: str, package: str) -> set[str]:
    """Every module a source file imports, at any depth (inside functions too), relative ones resolved."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names}
    return out


def offline_imports(path: Path) -> list[str]:
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    return sorted(m for m in imported_modules(path.read_text(), package) if m == OFFLINE or m.startswith(OFFLINE + "."))


@pytest.mark.parametrize("source, package, found", [
    ("from madx.train import corpus", "serving", True),
    ("def f():\n    from madx.train.evaluate import evaluate_ner", "serving", True),
    ("import madx.train.cli as c", "serving", True),
    ("from ..train import data", "madx.x", True),  # relative: madx.train.data
    ("from madx import train", "serving", True),
    ("from madx.features import pad", "serving", False),
    ("from madx.training_notes import x", "serving", False),
])
def test_the_checker_sees_every_kind_of_import(source, package, found):
    mods = imported_modules(source, package)
    assert any(m == OFFLINE or m.startswith(OFFLINE + ".") for m in mods) is found


def test_serving_never_imports_the_offline_half():
    bad = {str(p.relative_to(ROOT)): offline_imports(p) for p in sorted((ROOT / "serving").rglob("*.py"))}
    assert {k: v for k, v in bad.items() if v} == {}
    # the library that serving imports must not pull it in either
    lib = {str(p.relative_to(ROOT)): offline_imports(p) for p in sorted((ROOT / "madx").glob("*.py"))}
    assert {k: v for k, v in lib.items() if v} == {}


def test_starting_the_server_loads_no_offline_module():
    code = ("import sys, serving.main, serving.app, serving.deployments, serving.engine; "
            f"print(sorted(m for m in sys.modules if m == {OFFLINE!r} or m.startswith({OFFLINE + '.'!r})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_no_module_is_longer_than_450_lines():
    long = {str(p.relative_to(ROOT)): n for d in ("madx", "serving") for p in sorted((ROOT / d).rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}
