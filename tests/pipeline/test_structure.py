"""The package's shape: no import cycle, no long module, a small public API that imports cheaply."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pipeline

PACKAGE = Path(pipeline.__file__).parent
MAX_MODULE_LINES = 400


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(path: Path, modules: set[str]) -> set[str]:
    """Package modules ``path`` imports when it runs (at import time or inside functions)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "pipeline":
            if node.module == "pipeline":
                found.update(alias.name for alias in node.names if alias.name in modules)
            else:
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("pipeline."))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return found - {path.stem}


def _modules() -> dict[str, Path]:
    return {path.stem: path for path in PACKAGE.glob("*.py") if path.stem not in {"__init__", "__main__"}}


def test_no_import_cycle():
    """Walk every runtime import between the package's modules: the graph has no cycle."""
    modules = _modules()
    graph = {name: _runtime_imports(path, set(modules)) for name, path in modules.items()}
    done: set[str] = set()

    def visit(name: str, stack: list[str]) -> None:
        if name in stack:
            cycle = [*stack[stack.index(name) :], name]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if name in done:
            return
        for imported in sorted(graph.get(name, ())):
            visit(imported, [*stack, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])
    assert graph["config"] <= {"errors", "overrides", "input_checks", "push_auth", "worker_groups"}, graph[
        "config"
    ]
    assert graph["input_checks"] <= {"errors"}, graph["input_checks"]
    assert graph["push_auth"] <= {"errors"}, graph["push_auth"]
    assert graph["worker_groups"] <= {"errors"}, graph["worker_groups"]
    assert graph["overrides"] <= {"errors"}, graph["overrides"]
    assert graph["errors"] == set()


def test_no_module_is_long():
    """Every module stays readable in one sitting."""
    lengths = {path.name: len(path.read_text(encoding="utf-8").splitlines()) for path in PACKAGE.glob("*.py")}
    assert {name: n for name, n in lengths.items() if n > MAX_MODULE_LINES} == {}


def test_public_api_is_small_and_imports_cheaply():
    """``import pipeline`` loads neither Ray nor torch; every public name resolves on use."""
    code = (
        "import sys, pipeline; "
        "assert not {'ray', 'torch', 'pyarrow'} & set(sys.modules), sorted(sys.modules); "
        "[getattr(pipeline, name) for name in pipeline.__all__]; "
        "print(len(pipeline.__all__))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert {"load_config", "Config", "run_job", "RunSummary", "PipelineError"} <= set(pipeline.__all__)
    assert set(pipeline.__all__) - {"__version__"} == set(pipeline._EXPORTS)
    assert callable(pipeline.run_job)
    assert pipeline.ConfigError.exit_code == 2
