"""The package's layers: imports only go downward, no cycles, notebooks never use tooling.

Layers, bottom to top (``ntkrepro/__init__.py`` is the notebooks' entry and sits with
the reproduction layer):

- leaves: ``compat``, ``errors``, ``files``, ``memo``, ``progress``, ``memory`` (import
  only each other);
- science (no I/O but the data loaders): ``models``, ``kernels``, ``predict``,
  ``metrics``, ``intervals``, ``train``, ``meanfield``, ``data``, ``datasets``, ``nad``;
- reproduction: ``config``, ``claims``, ``results``, ``plotting``, ``measure``;
- tooling (never imported by notebooks): ``ntkrepro.tooling.*``.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "ntkrepro"
LAYERS = {
    "leaves": {"compat", "errors", "files", "memo", "progress", "memory", "cost"},
    "science": {"models", "kernels", "predict", "metrics", "train", "meanfield", "data"}
    | {"datasets", "nad", "intervals"},
    "reproduction": {"__init__", "config", "claims", "results", "plotting", "measure"},
    "tooling": {"tooling"},
}
ORDER = list(LAYERS)


def module_name(path: Path) -> str:
    """``kernels`` for ntkrepro/kernels.py, ``tooling`` for anything under ntkrepro/tooling."""
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def layer_of(module: str) -> str:
    for layer, members in LAYERS.items():
        if module in members:
            return layer
    raise AssertionError(f"ntkrepro.{module} is in no layer: add it to LAYERS (and the docs)")


def imported_modules(path: Path) -> set[str]:
    """ntkrepro modules that ``path`` imports anywhere (top level or inside functions)."""
    return imports_in(ast.parse(path.read_text()))


def imports_in(tree: ast.AST) -> set[str]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "ntkrepro":
                names = [f"ntkrepro.{a.name}" for a in node.names]
            else:
                names = [node.module]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "ntkrepro" and len(parts) > 1:
                out.add(parts[1])
    return out - {"__version__"}


def graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        edges.setdefault(module_name(path), set()).update(imported_modules(path))
    for module in edges:
        edges[module].discard(module)
    return edges


def test_every_module_has_a_layer_and_imports_only_downward():
    problems = []
    for module, targets in graph().items():
        here = ORDER.index(layer_of(module))
        for target in sorted(targets):
            there = ORDER.index(layer_of(target))
            if there > here:
                problems.append(f"{module} ({ORDER[here]}) imports {target} ({ORDER[there]})")
    assert not problems, "upward imports:\n" + "\n".join(problems)


def test_there_is_no_import_cycle():
    edges = graph()
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*stack, node, nxt]))
            if nxt not in state:
                visit(nxt, [*stack, node])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [])


def test_the_checker_sees_cycles_and_upward_imports(tmp_path, monkeypatch):
    """The two tests above can fail: a planted upward import and cycle are found."""
    fake = tmp_path / "ntkrepro"
    fake.mkdir()
    (fake / "kernels.py").write_text("from ntkrepro import results\n")
    (fake / "results.py").write_text("def f():\n    from ntkrepro.kernels import analytic\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    with pytest.raises(AssertionError, match="kernels \\(science\\) imports results"):
        test_every_module_has_a_layer_and_imports_only_downward()
    with pytest.raises(AssertionError, match="import cycle"):
        test_there_is_no_import_cycle()


@pytest.mark.parametrize("path", sorted((ROOT / "notebooks").glob("*/*.ipynb")), ids=str)
def test_notebooks_never_import_tooling(path):
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        tree = ast.parse("\n".join(line for line in source.splitlines() if line[:1] not in "%!"))
        assert "tooling" not in imports_in(tree), f"{path.name} imports ntkrepro.tooling"
