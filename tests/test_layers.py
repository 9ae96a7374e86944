"""The package's import structure (docs/architecture.md): no import cycle and no upward import.

Every ``import`` of the package's own modules counts, at module level and inside functions alike, so a
cycle cannot hide behind a function-level import. The layers, each importing only from those to its left::

    errors, files, cells < rmt < nn, data < prune < config < runs < train < report < commands < cli

``rmtprune.integrations`` imports ``prune`` and ``nn`` (and what they stand on) only; the package's root
``__init__`` (the lazy Python API) may name anything, and only ``__version__`` is imported from it; the
deprecated module paths kept for one release (``rmtprune.outputs``, ``rmtprune.checkpoint``,
``rmtprune.schedules``) re-export from above and are imported by nothing inside the package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "rmtprune"

LAYERS = [("errors", "files", "cells", "buildinfo", "_version", "conf"), ("rmt",), ("nn", "data"), ("prune",),
          ("config",), ("runs",), ("train",), ("report",), ("commands",), ("cli", "__main__")]
INTEGRATIONS_MAY_IMPORT = {"errors", "files", "cells", "rmt", "nn", "prune"}
DEPRECATED = {"rmtprune.outputs", "rmtprune.checkpoint", "rmtprune.schedules"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> list[tuple[str, int]]:
    """(module, line) of every import of the package's own modules in ``path``, relative ones resolved; ``from
    a import b`` counts as ``a.b`` where ``a.b`` is a module of the package, else as ``a``."""
    name, is_init = module_name(path), path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "rmtprune"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".")[: len(name.split(".")) - node.level + (1 if is_init else 0)]
                base = ".".join(parts + ([node.module] if node.module else []))
            if base.split(".")[0] != "rmtprune":
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((sub if sub in MODULES else base, node.lineno))
    return found


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}
GRAPH = {m: imported_modules(p) for m, p in MODULES.items()}


def layer(module: str) -> int | None:
    """The layer index of a module (its first name below ``rmtprune``), None for the root and integrations."""
    top = module.split(".")[1] if "." in module else None
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    return None


def test_every_module_has_a_layer() -> None:
    unplaced = [m for m in MODULES if m != "rmtprune" and layer(m) is None and m not in DEPRECATED
                and not m.startswith("rmtprune.integrations")]
    assert not unplaced, f"modules outside the layer order (add them to docs/architecture.md and LAYERS): {unplaced}"


def test_no_upward_import() -> None:
    wrong = []
    for module, imports in GRAPH.items():
        if module == "rmtprune" or module in DEPRECATED:
            continue
        for target, line in imports:
            if target in DEPRECATED:
                wrong.append(f"{module}:{line} imports the deprecated {target}")
            elif target == "rmtprune":
                continue  # checked by test_only_version_from_the_root
            elif module.startswith("rmtprune.integrations"):
                if target.split(".")[1] not in INTEGRATIONS_MAY_IMPORT:
                    wrong.append(f"{module}:{line} imports {target}")
            elif layer(target) is None or layer(target) > layer(module):
                wrong.append(f"{module}:{line} imports {target} (layer {layer(target)} > {layer(module)})")
    assert not wrong, "upward imports:\n" + "\n".join(wrong)


def test_only_version_from_the_root() -> None:
    wrong = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and module != "rmtprune" and (
                    node.module == "rmtprune" or (node.level and not node.module and module.count(".") == node.level - 1)):
                wrong += [f"{module}:{node.lineno} {a.name}" for a in node.names if a.name != "__version__"]
    assert not wrong, f"names imported from the package root (import their home instead): {wrong}"


def cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module, or a module importing itself (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, []):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, []):
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle() -> None:
    graph = {m: sorted({t for t, _ in imps if t in MODULES and t != "rmtprune"}) for m, imps in GRAPH.items()
             if m != "rmtprune"}
    assert not cycles(graph), f"import cycles: {cycles(graph)}"


@pytest.mark.parametrize("graph,expected", [({"a": ["b"], "b": ["a"]}, [["a", "b"]]),
                                            ({"a": ["b"], "b": ["c"], "c": []}, []),
                                            ({"a": ["a"]}, [["a"]])])
def test_the_cycle_finder_finds_cycles(graph: dict[str, list[str]], expected: list[list[str]]) -> None:
    assert cycles(graph) == expected


def test_a_function_level_import_counts(tmp_path: Path) -> None:
    """The walk sees imports inside functions (the way today's cycles were held together)."""
    mod = PACKAGE / "nn" / "models.py"
    assert any(t.startswith("rmtprune.nn") for t, _ in imported_modules(mod))
    fake = tmp_path / "x.py"
    fake.write_text("def f():\n    from rmtprune.train import loop\n")
    tree = ast.parse(fake.read_text())
    assert any(isinstance(n, ast.ImportFrom) and n.module == "rmtprune.train" for n in ast.walk(tree))
