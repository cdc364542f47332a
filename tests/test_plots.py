"""Plots on known data: the expected series, labels and files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from optbench import plots


def requests(ttft_ms: list[float], itl_ms: float) -> pd.DataFrame:
    n = len(ttft_ms)
    return pd.DataFrame(
        {
            "warmup": [False] * n,
            "success": [True] * n,
            "ttft_ms": ttft_ms,
            "e2e_ms": [t + 100 for t in ttft_ms],
            "tokens_per_s": [50.0] * n,
            "itl_ms": [np.full(5, itl_ms) for _ in range(n)],
        }
    )


@pytest.fixture
def table():
    return pd.DataFrame(
        {
            "configuration": ["base", "fast", "sloppy"],
            "status": ["ok"] * 3,
            "baseline": [True, False, False],
            "output_token_throughput": [100.0, 250.0, 400.0],
            "quality_qa": [0.6, 0.59, 0.3],
            "quality_code": [0.5, 0.49, 0.2],
            "quality_overall": [0.55, 0.54, 0.25],
            "acceptable": [True, True, False],
        }
    )


def test_latency_plots_have_one_series_per_configuration(tmp_path):
    reqs = {"a": requests([10, 20, 30], 5.0), "b": requests([40, 50, 60], 9.0)}
    fig = plots.latency_percentiles(reqs)
    ax = fig.axes[0]
    heights = [p.get_height() for p in ax.patches]
    assert heights[:3] == pytest.approx([20.0, 28.0, 29.8])  # P50/P90/P99 of 10, 20, 30
    assert ax.get_ylabel() == "TTFT (ms)" and [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b"]
    cdf = plots.latency_cdfs(reqs)
    assert len(cdf.axes[0].lines) == 2 and cdf.axes[0].get_xlabel() == "TTFT (ms)"
    itl = plots.itl_distribution(reqs)
    assert "P50 9.0 ms" in itl.axes[0].get_legend().get_texts()[1].get_text()
    path = plots.save(fig, "latency", tmp_path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_decision_plot_shades_the_band_and_marks_acceptable(table, tmp_path):
    fig = plots.decision_plot(table)
    ax = fig.axes[0]
    band = [p for p in ax.patches if p.get_label().startswith("within 5%")]
    assert len(band) == 1
    # axvspan gives a Rectangle (matplotlib >= 3.9) or a Polygon (older).
    x0 = band[0].get_x() if hasattr(band[0], "get_x") else band[0].get_xy()[0][0]
    assert x0 == pytest.approx(0.95 * 0.55)
    labels = [t.get_text() for t in ax.texts]
    assert labels == ["base (baseline)", "fast", "sloppy"]
    assert ax.get_ylabel() == "output-token throughput (tokens/s)"
    filled = [
        c for c in ax.collections if len(c.get_offsets()) and c.get_facecolors().size and c.get_facecolors()[0][3] > 0
    ]
    assert len(filled) == 2  # base and fast are acceptable
    q = plots.quality_by_category(table)
    assert [t.get_text() for t in q.axes[0].get_xticklabels()] == ["qa", "code", "overall"]
    assert plots.save(fig, "decision", tmp_path).exists()


def test_throughput_against_concurrency():
    rows = pd.DataFrame({"label": ["x", "x", "x"], "concurrency": [8, 1, 32], "output_token_throughput": [80, 10, 200]})
    fig = plots.throughput_vs_load(rows)
    line = fig.axes[0].lines[0]
    assert list(line.get_xdata()) == [1, 8, 32] and list(line.get_ydata()) == [10, 80, 200]
    assert fig.axes[0].get_xlabel().startswith("concurrency")
