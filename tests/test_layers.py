"""The package is layered: every module imports only from its own layer or the ones
below, and no import cycle exists, imports inside functions included (they are
read from the source with `ast`, not from what Python happens to import)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "bh_jax"

# Bottom to top (docs/development.md). A module belongs to the layer of its
# longest listed prefix.
LAYERS = [
    ["bh_jax._xla_workarounds", "bh_jax.version", "bh_jax.config", "bh_jax.io",
     "bh_jax.figures", "bh_jax.batching", "bh_jax.sharding", "bh_jax.metrics"],
    ["bh_jax.preprocess", "bh_jax.reference", "bh_jax.inputs", "bh_jax.resample",
     "bh_jax.baselines.hm", "bh_jax.baselines.ssimh", "bh_jax.baselines.nyul",
     "bh_jax.baselines"],
    ["bh_jax.data"],
    ["bh_jax.flows"],
    ["bh_jax.training", "bh_jax.pretrained"],
    ["bh_jax.baselines.networks", "bh_jax.baselines.learned"],
    ["bh_jax.harmonize"],
    ["bh_jax"],  # the public API (bh_jax/__init__.py)
    ["bh_jax.experiments"],
    ["bh_jax.cli", "bh_jax.bench"],
]


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path) -> dict[str, set[str]]:
    """{module: the package's modules it imports anywhere in its source}."""
    modules = {module_name(p, root): p for p in root.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:  # `from pkg import submodule` imports the submodule
                    full = f"{node.module}.{alias.name}"
                    targets.add(full if full in modules else node.module)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def layer_of(module: str) -> int:
    best = max(((len(prefix), i) for i, layer in enumerate(LAYERS) for prefix in layer
                if module == prefix or module.startswith(prefix + ".")), default=None)
    assert best is not None, f"{module} is in no layer: add it to LAYERS (and the docs)"
    return best[1]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return [f"{a} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)})"
            for a in sorted(graph) for b in sorted(graph[a]) if layer_of(b) > layer_of(a)]


def test_no_import_cycle():
    assert cycles(import_graph(PACKAGE)) == []


def test_every_module_imports_only_downwards():
    assert upward_imports(import_graph(PACKAGE)) == []


def test_the_library_never_imports_experiments_or_command_lines():
    graph = import_graph(PACKAGE)
    on_top = ("bh_jax.experiments", "bh_jax.cli", "bh_jax.bench")
    below = [m for m in graph if not m.startswith(on_top)]
    assert below and not [(m, t) for m in below for t in graph[m] if t.startswith(on_top)]


def test_the_checks_find_a_cycle_hidden_in_a_function(tmp_path):
    """The checks can fail: a two-module package whose cycle runs through an import
    inside a function, the way cycles used to be kept alive here."""
    package = tmp_path / "bh_jax"
    (package / "harmonize").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "harmonize" / "__init__.py").write_text("")
    (package / "config.py").write_text("def f():\n    from bh_jax.harmonize import run\n")
    (package / "harmonize" / "run.py").write_text("from bh_jax import config\n")
    graph = import_graph(package)
    assert graph["bh_jax.config"] == {"bh_jax.harmonize.run"}
    assert cycles(graph) == [["bh_jax.config", "bh_jax.harmonize.run"]]
    assert upward_imports(graph) == ["bh_jax.config (layer 0) imports bh_jax.harmonize.run "
                                     "(layer 6)"]
