"""The package's shape: its layers, no import cycle, a small public API that imports cheaply.

The layers are import-linter's contract in pyproject.toml (``[tool.importlinter]``): each
subpackage imports only those below it, so ``review`` never imports ``run`` and ``compute``
and ``outputs`` never import each other. It replaces a cap on module length: what keeps the
package legible is which part may lean on which, not how long a file is.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pipeline

PACKAGE = Path(pipeline.__file__).parent
ROOT = PACKAGE.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """import-linter over the ``pipeline`` package under ``root``, with ``root``'s pyproject contracts."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_subpackages_import_only_the_layers_below():
    """import-linter's layers contract holds for the package as it is."""
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "1 kept, 0 broken" in result.stdout


def test_a_forbidden_import_breaks_the_layers(tmp_path):
    """A copy of the package with compute importing outputs, and review importing run, fails the check."""
    shutil.copytree(PACKAGE, tmp_path / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "pipeline" / "compute" / "wrong.py").write_text(
        '"""Not allowed: compute sits beside outputs."""\n\nfrom pipeline.outputs import layout\n\n'
        "__all__ = ['layout']\n",
        encoding="utf-8",
    )
    (tmp_path / "pipeline" / "review" / "wrong.py").write_text(
        '"""Not allowed: review sits below run."""\n\nimport pipeline.run.job\n', encoding="utf-8"
    )
    result = _lint_imports(tmp_path)
    assert result.returncode != 0, result.stdout[-4000:]
    assert "0 kept, 1 broken" in result.stdout
    assert "pipeline.compute.wrong -> pipeline.outputs.layout" in result.stdout
    assert "pipeline.review.wrong -> pipeline.run.job" in result.stdout


def test_a_module_outside_every_layer_breaks_the_layers(tmp_path):
    """A new top-level module that no layer names fails the check (the contract is exhaustive)."""
    shutil.copytree(PACKAGE, tmp_path / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "pipeline" / "stray.py").write_text('"""Belongs to no layer."""\n', encoding="utf-8")
    result = _lint_imports(tmp_path)
    assert result.returncode != 0, result.stdout[-4000:]
    assert "pipeline.stray" in result.stdout


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_names(node: ast.AST) -> list[str]:
    """The dotted names an import statement of the package names (module, or module.attribute)."""
    if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "pipeline":
        return [f"{node.module}.{alias.name}" for alias in node.names]
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name.startswith("pipeline.")]
    return []


def _runtime_imports(path: Path, modules: set[str]) -> set[str]:
    """Package modules ``path`` imports when it runs (at import time or inside functions)."""
    found: set[str] = set()

    def resolve(name: str) -> None:
        while name and name not in modules:  # pipeline.outputs.layout.OutputLocation -> the module
            name = name.rpartition(".")[0]
        if name and name != "pipeline":  # the package's __init__ is the lazy API, not a dependency
            found.add(name)

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        for name in _imported_names(node):
            resolve(name)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return found - {_module_name(path)}


def _import_graph(root: Path) -> dict[str, set[str]]:
    paths = {_module_name(path): path for path in (root / "pipeline").rglob("*.py")}
    return {name: _runtime_imports(path, set(paths)) for name, path in paths.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    done: set[str] = set()

    def visit(name: str, stack: list[str]) -> list[str] | None:
        if name in stack:
            return [*stack[stack.index(name) :], name]
        if name in done:
            return None
        for imported in sorted(graph.get(name, ())):
            if found := visit(imported, [*stack, name]):
                return found
        done.add(name)
        return None

    for name in sorted(graph):
        if found := visit(name, []):
            return found
    return None


def test_no_import_cycle():
    """Walk every runtime import between the package's modules, subpackages included: no cycle."""
    graph = _import_graph(ROOT)
    assert "pipeline.outputs.run_output" in graph  # modules of subpackages are walked too
    assert "pipeline.outputs.layout" in graph["pipeline.outputs.run_output"]
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])
    assert graph["pipeline.errors"] == set()


def test_cycle_check_finds_a_cycle():
    """The cycle walk reports a cycle through a subpackage's modules (it is not vacuous)."""
    graph = _import_graph(ROOT)
    graph["pipeline.outputs.layout"] = {*graph["pipeline.outputs.layout"], "pipeline.outputs.run_output"}
    assert _cycle(graph) is not None


def _named_in_architecture() -> tuple[set[str], set[str]]:
    """The module paths docs/architecture.md names one a line, and the test files those lines name."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line.startswith("- `")]
    module = re.compile(r"`((?:pipeline|benchmarks)/[\w/]+\.py)`")
    modules = {match for line in lines for match in module.findall(line)}
    tests = {match for line in lines for match in re.findall(r"`(tests/[\w/]+\.py)`", line)}
    return modules, tests


def test_architecture_names_every_module_and_a_real_test():
    """docs/architecture.md names every module of the package and benchmarks/; each test it cites exists."""
    modules, tests = _named_in_architecture()
    present = {
        str(path.relative_to(ROOT))
        for folder in ("pipeline", "benchmarks")
        for path in (ROOT / folder).rglob("*.py")
        if path.name != "__init__.py" or path.parent.name in {"pipeline", "config", "storage", "sources"}
    }
    assert sorted(present - modules) == [], "modules docs/architecture.md does not name"
    assert sorted(modules - present) == [], "docs/architecture.md names modules that do not exist"
    assert sorted(test for test in tests if not (ROOT / test).is_file()) == []


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
