"""The package's imports run down the data flow, never up it, and never in a circle.

The layers, in the order of the flow (a module may import its own layer and the layers before
it, never a later one):

    io, runtime -> data -> features -> method -> analysis -> training -> experiments -> plots
    -> batch, train (the command lines)

Every ``import`` / ``from ... import`` of an ``hcld_lib`` module is read from the source (also
inside functions), so a late import cannot hide an edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "hcld_lib"
LAYERS: tuple[str, ...] = ("io", "runtime", "data", "features", "method", "analysis",
                           "training", "experiments", "plots", "batch")
RANK = {name: i for i, name in enumerate(LAYERS)}
RANK["runtime"] = RANK["io"]  # the base layer: errors, files, device, seed, offline
RANK["train"] = RANK["batch"]  # the two command lines: one run, every notebook


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str) -> set[str]:
    """The hcld_lib modules ``path`` imports (``from hcld_lib.x import y`` counts as x.y when
    x.y is a module, else x)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("hcld_lib")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if not base.startswith("hcld_lib"):
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in MODULES else base)
    return {m for m in found if m != name}


MODULES: dict[str, Path] = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
GRAPH: dict[str, set[str]] = {name: _imports(path, name) for name, path in MODULES.items()}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "io"


def test_every_module_belongs_to_a_layer():
    unknown = sorted(m for m in MODULES if m != "hcld_lib" and _layer(m) not in RANK)
    assert not unknown, f"modules outside the layers {LAYERS}: {unknown}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "hcld_lib"))
def test_imports_run_down_the_flow(module):
    up = sorted(dep for dep in GRAPH[module]
                if dep != "hcld_lib" and RANK[_layer(dep)] > RANK[_layer(module)])
    assert not up, f"{module} ({_layer(module)}) imports later layers: {up}"


def test_there_is_no_import_cycle():
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(GRAPH.get(node, ())):
            if dep not in GRAPH:
                continue
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state:
                cycle = visit(dep)
                if cycle:
                    return cycle
        state[node] = 2
        path.pop()
        return None

    for module in sorted(GRAPH):
        if module not in state:
            cycle = visit(module)
            assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_walker_sees_what_it_must():
    """The test itself can fail: a known down edge, a relative import and a late import."""
    assert "hcld_lib.features.cache" in GRAPH["hcld_lib.features.extract"]
    assert "hcld_lib.io" in GRAPH["hcld_lib.data.iemocap"]
    assert all(_layer(m) in RANK for m in GRAPH["hcld_lib.batch"])


def test_a_training_process_imports_no_more_than_training_needs():
    """A grid worker imports the training code once per process: the synthetic voice
    (scipy.signal), the Hugging Face stack and the compiler stay out of it."""
    import subprocess
    import sys

    code = ("import sys, hcld_lib.training.run, hcld_lib.experiments.grid; "
            "from hcld_lib.runtime import set_seed; set_seed(0); "
            "print(sorted(m for m in ('scipy.signal', 'transformers', 'torch._inductor') "
            "if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
