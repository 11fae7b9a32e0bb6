"""The house rules, checked: imports only go downward through the pipeline stages (the
import-linter contract in pyproject.toml), and no module uses another module's private names."""
from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# where each installed package's files live in the checkout (pyproject's package-dir)
PACKAGE_DIRS = {"fxsparse": ROOT / "fxsparse", "fxsparse.passes": ROOT / "passes", "fxsparse.zoo": ROOT / "zoo"}


def modules():
    """{dotted module name: source path} of every library module."""
    out = {}
    for pkg, folder in PACKAGE_DIRS.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([pkg, *parts]) if parts else pkg] = path
    return out


def test_imports_follow_the_pipeline_layers(tmp_path):
    """import-linter reads the package from disk; the checkout keeps passes/ and zoo/ beside
    fxsparse/ (pyproject's package-dir), so the check runs on a copy laid out as installed."""
    pytest.importorskip("importlinter")
    staged = tmp_path / "fxsparse"
    shutil.copytree(ROOT / "fxsparse", staged, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "passes", staged / "passes", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "zoo", staged / "zoo", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    code = ("import importlib.util, sys; from importlinter.cli import lint_imports; "
            f"assert importlib.util.find_spec('fxsparse').origin.startswith({str(tmp_path)!r}); "
            "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True, no_logo=True))")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _private_definitions(tree) -> set[str]:
    """Private names a module defines: functions, classes, module or class variables, self._x."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def _on_self(node: ast.Attribute) -> bool:
    v = node.value
    return (isinstance(v, ast.Name) and v.id in ("self", "cls")) or (
        isinstance(v, ast.Call) and isinstance(v.func, ast.Name) and v.func.id == "super")


def test_no_module_uses_another_modules_private_names():
    """``from m import _x`` of another module, or ``obj._x`` (obj not self) where ``_x`` is
    private to another of our modules (defined there, not here): each is a seam a refactor
    breaks silently. A subclass may use its base class's ``self._helpers``."""
    trees = {name: ast.parse(path.read_text(), str(path)) for name, path in modules().items()}
    defined = {name: _private_definitions(tree) for name, tree in trees.items()}
    ours = set().union(*defined.values())
    problems = []
    for name, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        problems.append(f"{name}:{node.lineno} imports private {alias.name} from {node.module}")
            elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                if _on_self(node):
                    continue  # a subclass using its base class's protected helpers
                if node.attr in ours and node.attr not in defined[name]:
                    problems.append(f"{name}:{node.lineno} uses .{node.attr}, private to another module")
    assert not problems, "\n".join(problems)
