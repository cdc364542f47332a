"""The package's shape: no import cycles between its modules, no private names imported
across modules (the extension ``_core`` aside), no module past ~800 lines, and no library code looking for ../shared."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "python" / "optbench"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(path: Path, names: set[str], lazy: bool = False) -> list[tuple[str, list[str]]]:
    """(module, imported names) of every import of the package's modules at module level, and
    with ``lazy`` also those inside functions."""
    found = []
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree) if lazy else tree.body:
        if isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names if a.name.startswith("optbench")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("optbench"):
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                found.append((sub, []) if sub in names else (node.module, [a.name]))
    return found


def test_no_import_cycles():
    modules = _modules()
    names = set(modules)
    graph = {
        m: {target for target, _ in _imports(p, names) if target in names and target != m} for m, p in modules.items()
    }

    def cycle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in graph[node] - {"optbench"}:
                if nxt == start:
                    return path + [start]
                if nxt not in path:
                    stack.append((nxt, path + [nxt]))
        return None

    cycles = [c for m in graph if (c := cycle_from(m))]
    assert not cycles, f"import cycles: {cycles[:3]}"


def test_plots_and_the_report_share_the_quality_rule_without_importing_each_other():
    modules = _modules()
    plots = {t for t, _ in _imports(modules["optbench.plots"], set(modules), lazy=True)}
    assert "optbench.report" not in plots and "optbench.quality" in plots
    for name in ("optbench.report", "optbench.evaluate"):
        assert "optbench.quality" in {t for t, _ in _imports(modules[name], set(modules), lazy=True)}


def test_no_private_names_across_modules():
    modules = _modules()
    crossing = [
        (m, target, n)
        for m, p in modules.items()
        for target, imported in _imports(p, set(modules), lazy=True)
        for n in imported
        if n.startswith("_") and not n.startswith("__") and n != "_core"
    ]
    assert not crossing, crossing


def test_no_module_is_too_long():
    long = {
        str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 800
    }
    assert not long, long


def test_library_code_does_not_look_for_the_development_folder():
    for path in PACKAGE.rglob("*.py"):
        assert "../shared" not in path.read_text() and '"shared"' not in path.read_text(), path


def test_python_dash_m_optbench_is_the_command_line():
    out = subprocess.run([sys.executable, "-m", "optbench", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "load-test" in out.stdout and "dataset" in out.stdout
