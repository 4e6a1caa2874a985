"""sdcpc_core's modules import each other one way: no circle, not even through a deferred import.

Every ``import`` counts, at module level or inside a function (a deferred import hides a circle from
Python, not from the reader). ``from package import name`` counts as importing the submodule when
``name`` is one.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "sdcpc_core"


def module_names() -> dict[str, Path]:
    modules = {}
    for path in (ROOT / PACKAGE).rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in modules else base)
    return {m for m in found if m in modules and m != name}


def test_no_import_circle_in_sdcpc_core():
    modules = module_names()
    graph = {name: imports_of(name, path, modules) for name, path in modules.items()}
    # a package's __init__ re-exporting its own submodules is not a circle through them
    for name in graph:
        if modules[name].name != "__init__.py":
            graph[name] = {m for m in graph[name]
                           if not (name.startswith(m + ".") and modules[m].name == "__init__.py")}
    circles, state = [], {}

    def visit(node, trail):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                circles.append(trail[trail.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not circles, "import circles: " + "; ".join(" -> ".join(c) for c in circles)


def test_the_graph_sees_deferred_imports():
    """The check would catch the circle this project once had (checkpoints <-> export)."""
    modules = module_names()
    export = imports_of("sdcpc_core.export", modules["sdcpc_core.export"], modules)
    assert "sdcpc_core.checkpoints" in export or "sdcpc_core.checkpoints.export_dir" in export
    fmt = imports_of("sdcpc_core.checkpoints.format", modules["sdcpc_core.checkpoints.format"], modules)
    assert "sdcpc_core.export" not in fmt
