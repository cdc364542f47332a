"""The notebooks run headless from top to bottom against the embedded server (small settings)
and are committed without outputs."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_there_are_three_notebooks():
    assert [p.stem for p in NOTEBOOKS] == ["01_quickstart", "02_compare_configs", "03_analysis"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_are_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name} has outputs: clear them"


@pytest.mark.llama
@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_notebooks_run_top_to_bottom(tmp_path, monkeypatch):
    monkeypatch.setenv("OPTBENCH_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("OPTBENCH_RESULTS_DIR", str(tmp_path / "results"))
    for path in NOTEBOOKS:  # in order: 03 analyses what 02 ran
        nb = nbformat.read(path, as_version=4)
        NotebookClient(
            nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
        ).execute()
        errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
        assert not errors, (path.name, errors)
    plots_dir = tmp_path / "results" / "plots"
    names = {p.name for p in plots_dir.glob("*.png")}
    assert {
        "quickstart_latency_cdfs.png",
        "decision.png",
        "analysis_decision.png",
        "analysis_latency_cdfs.png",
    } <= names
    assert (tmp_path / "results" / "RESULTS.md").read_text().count("## Recommendation") == 1
