"""The package's shape: stage subpackages, no import cycles, pure logic free of KFP."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "medembed"
# Launchers: they drive kfp (compile, kfp.local, the KFP client) and are never imported inside a task.
LAUNCHERS = {"medembed.cli", "medembed.local_run", "medembed.__main__",
             # the KFP client side of submit/runs (medembed/cluster): run on a workstation, never in a task
             "medembed.cluster.runs", "medembed.cluster.schedules", "medembed.cluster.commands"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at module level or inside functions, resolved to absolute names."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}


def test_no_import_cycles():
    graph = _graph()
    # A package's __init__ re-exporting its own modules is not a cycle between modules.
    for name in graph:
        graph[name] = {m for m in graph[name] if not name.startswith(m + ".")}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(trail[trail.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_stages_are_subpackages_with_one_entry_each():
    for stage in ("prep", "train", "evaluate", "register"):
        source = (PACKAGE / stage / "stage.py").read_text()
        assert "\ndef run(" in source, f"medembed.{stage}.stage.run is the stage's entry point"


def test_pure_logic_imports_no_kfp_components_or_pipelines():
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        if name in LAUNCHERS:
            continue
        imported = _imports(path)
        bad = sorted(m for m in imported if m.split(".")[0] in ("kfp", "components", "pipelines"))
        assert not bad, f"{name} imports {bad}"


def test_training_stage_launches_and_workers_train_one_way_only():
    graph = _graph()
    assert "medembed.train.recipe" not in graph["medembed.train.launcher"]
    assert "medembed.train.launcher" not in graph["medembed.train.recipe"]
    assert "medembed.train.recipe" in graph["medembed.train.worker"]


def test_every_package_is_in_the_distribution_and_the_console_script_resolves():
    """`pip install .` (the project image) installs what pyproject's package finder lists: every package
    folder must be among them, and the console script must name a function that exists."""
    import importlib
    import tomllib

    from setuptools import find_packages

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    found = set(find_packages(str(ROOT), include=project["tool"]["setuptools"]["packages"]["find"]["include"]))
    on_disk = {_module_name(p) for top in ("medembed", "components", "pipelines")
               for p in (ROOT / top).rglob("__init__.py")}
    assert on_disk and on_disk <= found, sorted(on_disk - found)
    module, _, function = project["project"]["scripts"]["medembed"].partition(":")
    assert (module, function) == ("medembed.cli", "main")
    assert callable(getattr(importlib.import_module(module), function))
