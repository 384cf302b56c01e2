"""The import graph of the library and the four apps has no cycle, lazy imports inside functions included."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("stadapter_deploy", "serve", "export", "demo", "train", "predict")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> dict[str, set[str]]:
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    modules = {module_name(p): p for p in files}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):  # every import, at any depth
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = resolve(name, is_package, node)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 50 and "stadapter_deploy.runtime.predictor" in graph
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_runtime_never_imports_the_build_time_package():
    graph = import_graph()
    runtime = [m for m in graph if m.startswith("stadapter_deploy.runtime")]
    assert runtime and not any(t.startswith("stadapter_deploy.export") for m in runtime for t in graph[m])


def imports_of(graph: dict[str, set[str]], prefix: str) -> set[str]:
    """Every module that a module under `prefix` imports, at any depth of the function bodies."""
    return {t for m, targets in graph.items() if m == prefix or m.startswith(prefix + ".") for t in targets}


def under(modules: set[str], *prefixes: str) -> list[str]:
    return sorted(m for m in modules if any(m == p or m.startswith(p + ".") for p in prefixes))


APPS = ("train", "export", "serve", "demo", "predict")


def test_the_layers():
    """Imports only go down (DESIGN.md section 8): video and runtime never reach the batch package, the
    build-time packages or an app; serve never imports the batch package; demo never imports serve; no
    library module imports an app."""
    graph = import_graph()
    lib = "stadapter_deploy"
    for low in (f"{lib}.video", f"{lib}.runtime"):
        above = (f"{lib}.predict", f"{lib}.export", f"{lib}.train", *APPS)
        assert under(imports_of(graph, low), *above) == [], low
    assert under(imports_of(graph, f"{lib}.video"), f"{lib}.runtime") == []  # video sits below the runtime
    assert under(imports_of(graph, "serve"), f"{lib}.predict") == []
    assert under(imports_of(graph, "demo"), "serve") == []
    assert under(imports_of(graph, lib), *APPS) == []


def test_the_layer_check_sees_a_lazy_upward_import():
    graph = {"stadapter_deploy.video.x": {"stadapter_deploy.predict.batch"}, "stadapter_deploy.predict.batch": set()}
    assert under(imports_of(graph, "stadapter_deploy.video"), "stadapter_deploy.predict") == [
        "stadapter_deploy.predict.batch"
    ]


def test_one_opener():
    """Only the video package's opener opens a video for reading (av.open without mode="w"): every route
    refuses the same files the same way."""
    openers = []
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call) and ast.unparse(node.func) in ("av.open", "decord.VideoReader"):
                    writes = any(k.arg == "mode" and ast.unparse(k.value) == "'w'" for k in node.keywords)
                    if not writes:
                        openers.append(f"{path.relative_to(ROOT)}: {ast.unparse(node.func)}")
    assert sorted(openers) == [
        "stadapter_deploy/video/decode.py: decord.VideoReader",  # decord's own reader, after open_video's checks
        "stadapter_deploy/video/source.py: av.open",
        "stadapter_deploy/video/source.py: av.open",
    ], openers
