"""The package's shape: no import cycles inside pagcp, the allowed imports between its packages, and the
``pagcp.prune`` function staying callable whatever has been imported."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pagcp

ROOT = Path(pagcp.__file__).parent

#: which top-level packages of pagcp each one may import (docs/architecture.md); foundation modules
#: (errors, devices, runs, hyps) may be imported by all
FOUNDATION = {"errors", "devices", "runs", "hyps", "kernels", "_C"}
ALLOWED = {
    "ops": set(),
    "graph": {"ops"},
    "models": {"ops"},
    "data": set(),
    "detection": {"models", "data"},
    "training": {"models", "data", "detection"},
    "engine": {"graph", "ops", "models", "data", "detection"},
    "deploy": {"models"},
    "families": {"engine", "graph", "ops", "models", "data", "detection", "training", "deploy"},
    "pipeline": {"families", "engine", "graph", "ops", "models", "data", "detection", "training", "deploy"},
    "cli": {"pipeline", "families", "engine", "graph", "ops", "models", "data", "detection", "training", "deploy"},
}


def _module_name(path: Path) -> str:
    parts = ["pagcp", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """pagcp modules that ``path`` imports anywhere in its body (module level, functions, TYPE_CHECKING)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        found.update(t for t in targets if t in modules and t != name)
    return found


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in ROOT.rglob("*.py")}
    return {name: _imports(path, set(files)) for name, path in files.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_cycle_finder_finds_a_planted_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles_inside_pagcp():
    graph = _graph()
    assert len(graph) > 40
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_packages_import_only_what_the_architecture_allows():
    bad = []
    for name, targets in _graph().items():
        parts = name.split(".")
        if len(parts) < 3 or parts[1] not in ALLOWED:
            continue
        for target in targets:
            package = target.split(".")[1] if target.count(".") else ""
            if package and package != parts[1] and package not in FOUNDATION | ALLOWED[parts[1]]:
                bad.append(f"{name} -> {target}")
    assert not bad, bad


def test_pagcp_prune_stays_callable_after_importing_every_submodule():
    code = (
        "import importlib, pkgutil, torch, pagcp\n"
        "names = [m.name for m in pkgutil.walk_packages(pagcp.__path__, 'pagcp.') if not m.name.endswith('__main__')]\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "import pagcp.prune\n"
        "model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),\n"
        "                            torch.nn.Conv2d(8, 2, 1)).eval()\n"
        "batches = [(torch.rand(2, 3, 8, 8), None)]\n"
        "result = pagcp.prune(model, lambda out, _: out.abs().mean().reshape(1), batches, torch.zeros(1, 3, 8, 8),\n"
        "                     initial_rate=0.5, initial_thres=3.0, exp=False, topk=1.0)\n"
        "print(len(names), len(result.decisions), callable(pagcp.prune))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    imported, decisions, still_callable = out.stdout.split()
    assert int(imported) > 40 and int(decisions) == 1 and still_callable == "True"


def test_every_submodule_imports():
    names = [m.name for m in pkgutil.walk_packages(pagcp.__path__, "pagcp.") if not m.name.endswith("__main__")]
    for name in names:
        importlib.import_module(name)
    assert "pagcp.engine.executor" in names and "pagcp.graph.keep" in names


#: what only a model family (pagcp/families) or the model's own definition (pagcp/models) may do
FAMILY_ONLY = {
    "index a model's head": r"\.model\[-1\]",
    "test a class name": r"type\([^)]*\)\.__name__\s*(==|!=|in\b)|__class__\.__name__\s*(==|!=|in\b)",
    "compute a stride rule": r"max\([^)]*stride[^)]*,\s*32\)",
}


def test_only_families_know_model_kinds():
    """Nothing outside a family module (or the model classes themselves) tests class names, indexes a head or
    computes the image-size rule from strides: the commands, the pipeline, the engine and the graph ask the
    model's family (docs/architecture.md, "Model families")."""
    import re

    found = []
    for path in sorted(ROOT.rglob("*.py")):
        if path.relative_to(ROOT).parts[0] in ("families", "models"):
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            found += [
                f"{path.relative_to(ROOT)}:{n}: {what}" for what, rx in FAMILY_ONLY.items() if re.search(rx, line)
            ]
    assert found == []
