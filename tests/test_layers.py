"""Imports point down the layers, never up, and no two modules import each other (directly or
around a loop). Every import counts, including those inside functions.

    genie_pipeline (app: cli, config, demo, corpus)      imported by nothing
       ├── ingest ──► filtering ──► shards
       └── training ──► models, shards
"""
import ast
from pathlib import Path

from tests.conftest import ROOT

CARD = ("shards", "filtering", "ingest", "training", "models")
MAY_IMPORT = {
    "shards": {"shards"},
    "filtering": {"filtering", "shards"},
    "ingest": {"ingest", "filtering", "shards"},
    "models": {"models"},
    "training": {"training", "models", "shards"},
    "app": {"app", *CARD},
}


def _modules() -> dict[str, Path]:
    mods = {}
    for folder in (*CARD, "genie_pipeline"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts.pop()
            name = ".".join(parts if folder == "genie_pipeline" else ["genie_pipeline", *parts])
            mods[name] = path
    return mods


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in CARD else "app"


def _imports(name: str, path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) for every import in the file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.append((node.lineno, base))
            # `from pkg import mod` imports a module when pkg.mod is one
            found += [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return found


def _graph() -> tuple[dict[str, Path], dict[str, set[str]], list[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    bare = []
    for name, path in mods.items():
        for line, target in _imports(name, path):
            top = target.split(".")[0]
            if top in CARD:
                bare.append(f"{path.relative_to(ROOT)}:{line} imports {target} (use genie_pipeline.{target})")
            if target in mods and target != name:
                graph[name].add(target)
    return mods, graph, bare


def test_imports_point_down():
    mods, graph, bare = _graph()
    assert not bare, "\n".join(bare)
    up = []
    for name, targets in graph.items():
        for t in targets:
            if _layer(t) not in MAY_IMPORT[_layer(name)]:
                up.append(f"{mods[name].relative_to(ROOT)} ({_layer(name)}) imports {t} ({_layer(t)})")
    assert not up, "imports that point up:\n" + "\n".join(sorted(up))


def test_no_import_cycles():
    mods, graph, _ = _graph()
    # a package's __init__ that only names its modules is not a cycle with them
    cycles, state = [], {}

    def visit(m, stack):
        state[m] = "open"
        for t in sorted(graph[m]):
            if t.startswith(m + "."):
                continue
            if state.get(t) == "open":
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t, stack + [t])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_checker_sees_an_upward_import(tmp_path):
    """The test itself: an import inside a function, relative or absolute, is caught."""
    src = tmp_path / "x.py"
    src.write_text("def f():\n    from ..ingest import pipeline\n    import genie_pipeline.cli\n")
    found = {t for _, t in _imports("genie_pipeline.shards.x", src)}
    assert {"genie_pipeline.ingest", "genie_pipeline.ingest.pipeline", "genie_pipeline.cli"} <= found
    assert _layer("genie_pipeline.ingest.pipeline") not in MAY_IMPORT[_layer("genie_pipeline.shards.x")]
