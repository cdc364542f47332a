"""`optbench run` end to end: two embedded configurations (1 slot against 4) on the real
llama-server, every results file, and a RESULTS.md whose numbers equal the Parquet data."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import optbench
from optbench.config import parse_config
from optbench.datasets import build_test_dataset
from optbench.report import build_report

pytestmark = [pytest.mark.llama, pytest.mark.slow]


def embedded(name: str, parallel: int, baseline: bool):
    return parse_config(
        {
            "name": name,
            "engine": "llama_cpp",
            "model": "SmolLM2-135M-Instruct",
            "baseline": baseline,
            "server": {"model_path": "embedded", "parallel": parallel, "ctx_size": parallel * 4096},
            "load_test": {"num_requests": 6, "concurrency": 3, "input_tokens": 64, "output_tokens": 12, "warmup": 1},
            "evaluation": {
                "limit": 1,
                "embedding_model": EMBEDDING_MODEL,
                "max_tokens": {"qa": 16, "reasoning": 48, "chat": 24, "code": 48},
            },
        }
    )


EMBEDDING_MODEL = ""


@pytest.mark.timeout(900)
def test_run_two_configurations_and_rebuild_the_report(shared_dir, tmp_path):
    global EMBEDDING_MODEL
    EMBEDDING_MODEL = str(shared_dir / "models" / "all-MiniLM-L6-v2")
    data = tmp_path / "data.json"
    build_test_dataset(
        str(shared_dir / "datasets"), output=data, counts={"qa": 3, "reasoning": 3, "chat": 3, "code": 3}
    )
    broken = parse_config(
        {"name": "broken", "engine": "llama_cpp", "model": "m", "server": {"model_path": str(data)}}
    )  # not a GGUF: fails at start
    optbench.run(
        [embedded("np1", 1, True), broken, embedded("np4", 4, False)],
        profile="quick",
        dataset=data,
        results_dir=tmp_path / "results",
        report_path=tmp_path / "RESULTS.md",
        progress=False,
    )
    table = pd.read_csv(tmp_path / "results" / "results.csv")
    assert list(table["configuration"]) == ["np1", "broken", "np4"]
    assert list(table["status"]) == ["ok", "failed", "ok"]
    run_dir = next((tmp_path / "results" / "runs").iterdir())
    for name in ("np1", "np4"):
        row = table.set_index("configuration").loc[name]
        req = pd.read_parquet(run_dir / name / "requests.parquet")
        ok = req[~req["warmup"] & req["success"]]
        assert len(req[~req["warmup"]]) == 6
        assert row["ttft_p50_ms"] == pytest.approx(ok["ttft_ms"].quantile(0.5))
        assert row["e2e_p99_ms"] == pytest.approx(ok["e2e_ms"].quantile(0.99))
        samples = pd.read_parquet(run_dir / name / "samples.parquet")
        assert len(samples) == 4
        cat_means = samples.groupby("category")["score"].mean()
        assert row["quality_overall"] == pytest.approx(cat_means.mean())
        assert (run_dir / name / f"{name}.log").stat().st_size > 0
    md = (tmp_path / "RESULTS.md").read_text()
    np4 = table.set_index("configuration").loc["np4"]
    assert f"{np4['ttft_p50_ms']:,.1f}" in md and f"{np4['output_token_throughput']:,.1f}" in md
    assert "broken failed: start:" in md and "## Recommendation" in md
    plots_dir = tmp_path / "results" / "plots"
    assert {p.name for p in plots_dir.glob("*.png")} >= {"decision.png", "latency_cdfs.png", "quality_by_category.png"}
    assert "](results/plots/decision.png)" in md
    # `optbench report` rebuilds the same table from the Parquet files alone.
    (tmp_path / "results" / "results.csv").unlink()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "optbench.cli",
            "report",
            str(run_dir),
            "--results-dir",
            str(tmp_path / "results"),
            "--report",
            str(tmp_path / "R2.md"),
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    rebuilt = pd.read_csv(tmp_path / "results" / "results.csv")
    pd.testing.assert_frame_equal(rebuilt, table)
    assert (tmp_path / "R2.md").read_text() == md
    assert np.isfinite(
        build_report(run_dir, results_dir=tmp_path / "results", report_path=None)["findings"]["speedup_vs_baseline"]
    )
