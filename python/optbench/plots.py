"""Plots of a comparison, for RESULTS.md, notebooks and papers (matplotlib, no display needed).

Each function takes results as pandas DataFrames and returns a ``matplotlib.figure.Figure``
with titles, labelled axes (with units) and legends; :func:`save` writes it as a PNG under
``results/plots/``. Inputs:

- ``requests``: ``{configuration: per-request DataFrame}`` (``requests.parquet`` of each
  configuration, or ``LoadTestResult.requests``);
- ``table``: the comparison table (``results/results.csv``);
- ``load_rows``: load-test summary rows with ``concurrency`` or ``request_rate`` and
  ``output_token_throughput`` (``results/load_test_results.csv``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import matplotlib

matplotlib.use("Agg")  # files only; notebooks still show the returned figures

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from optbench.datasets import CATEGORIES  # noqa: E402
from optbench.files import atomic_path  # noqa: E402
from optbench.quality import QUALITY_THRESHOLD  # noqa: E402
from optbench.results import journal_rows  # noqa: E402

PERCENTILES = (50, 90, 99)


def _measured_ok(df: pd.DataFrame) -> pd.DataFrame:
    return df[~df["warmup"] & df["success"]]


def latency_percentiles(requests: Mapping[str, pd.DataFrame]) -> Figure:
    """TTFT, E2E and tokens/s at P50/P90/P99 per configuration (grouped bars)."""
    metrics = [("ttft_ms", "TTFT (ms)"), ("e2e_ms", "E2E latency (ms)"), ("tokens_per_s", "decode rate (tokens/s)")]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    names = list(requests)
    width = 0.8 / max(len(names), 1)
    x = np.arange(len(PERCENTILES))
    for ax, (col, label) in zip(axes, metrics):
        for i, name in enumerate(names):
            ok = _measured_ok(requests[name])
            values = [ok[col].quantile(p / 100) for p in PERCENTILES]
            ax.bar(x + i * width, values, width, label=name)
        ax.set_xticks(x + width * (len(names) - 1) / 2, [f"P{p}" for p in PERCENTILES])
        ax.set_ylabel(label)
        ax.set_title(label.split(" (")[0] + " percentiles")
    axes[0].legend(title="configuration")
    fig.suptitle("Latency and decode rate per configuration")
    fig.tight_layout()
    return fig


def latency_cdfs(requests: Mapping[str, pd.DataFrame]) -> Figure:
    """Empirical CDFs of TTFT and E2E latency per configuration."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, (col, label) in zip(axes, [("ttft_ms", "TTFT (ms)"), ("e2e_ms", "E2E latency (ms)")]):
        for name, df in requests.items():
            v = np.sort(_measured_ok(df)[col].dropna().to_numpy())
            if len(v):
                ax.step(v, np.arange(1, len(v) + 1) / len(v), where="post", label=name)
        ax.set_xlabel(label)
        ax.set_ylabel("share of requests")
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{label.split(' (')[0]} distribution (CDF)")
        ax.grid(alpha=0.3)
    axes[0].legend(title="configuration")
    fig.tight_layout()
    return fig


def itl_distribution(requests: Mapping[str, pd.DataFrame], bins: int = 50) -> Figure:
    """The inter-token latency distribution per configuration (every gap of every request)."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, df in requests.items():
        lists = _measured_ok(df)["itl_ms"].to_list()
        itl = np.concatenate([np.asarray(x, dtype=float) for x in lists]) if lists else np.array([])
        if len(itl):
            ax.hist(itl, bins=bins, histtype="step", density=True, label=f"{name} (P50 {np.median(itl):.1f} ms)")
    ax.set_xlabel("inter-token latency (ms)")
    ax.set_ylabel("density")
    ax.set_title("Inter-token latency distribution")
    ax.legend(title="configuration")
    fig.tight_layout()
    return fig


def throughput_vs_load(load_rows: pd.DataFrame, x: str | None = None) -> Figure:
    """Output-token throughput against concurrency (or request rate), one line per label."""
    if x is None:
        x = "request_rate" if load_rows.get("request_rate", pd.Series(dtype=float)).notna().any() else "concurrency"
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, rows in load_rows.groupby("label", sort=False):
        rows = rows.sort_values(x)
        ax.plot(rows[x], rows["output_token_throughput"], marker="o", label=str(label))
    ax.set_xlabel("concurrency (requests in flight)" if x == "concurrency" else "request rate (requests/s)")
    ax.set_ylabel("output-token throughput (tokens/s)")
    ax.set_title("Throughput against load")
    ax.grid(alpha=0.3)
    ax.legend(title="configuration")
    fig.tight_layout()
    return fig


def quality_by_category(table: pd.DataFrame) -> Figure:
    """Each category's quality score per configuration (grouped bars)."""
    cats = [c for c in CATEGORIES if f"quality_{c}" in table]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / max(len(table), 1)
    x = np.arange(len(cats) + 1)
    for i, (_, row) in enumerate(table.iterrows()):
        values = [row[f"quality_{c}"] for c in cats] + [row.get("quality_overall", np.nan)]
        ax.bar(x + i * width, values, width, label=row["configuration"])
    ax.set_xticks(x + width * (len(table) - 1) / 2, cats + ["overall"])
    ax.set_ylabel("score (0-1)")
    ax.set_ylim(0, 1)
    ax.set_title("Quality per category")
    ax.legend(title="configuration")
    fig.tight_layout()
    return fig


def decision_plot(table: pd.DataFrame, speed: str = "output_token_throughput") -> Figure:
    """Speed against overall quality: the baseline's 5% band shaded, acceptable configurations
    filled, the others hollow. The recommendation is the highest filled point."""
    fig, ax = plt.subplots(figsize=(8, 5.5))
    rows = (
        table[table[speed].notna() & table["quality_overall"].notna()]
        if "quality_overall" in table
        else table.iloc[0:0]
    )
    base = table[table["baseline"]].iloc[0] if table["baseline"].any() else None
    if base is not None and pd.notna(base.get("quality_overall")):
        q = base["quality_overall"]
        ax.axvspan(
            (1 - QUALITY_THRESHOLD) * q,
            max(1.0, q),
            color="tab:green",
            alpha=0.12,
            label=f"within {100 * QUALITY_THRESHOLD:.0f}% of the baseline's quality",
        )
        ax.axvline(q, color="tab:green", linestyle="--", linewidth=1)
    for _, r in rows.iterrows():
        ok = bool(r["acceptable"])
        ax.scatter(
            r["quality_overall"],
            r[speed],
            s=90,
            marker="o",
            edgecolors="black",
            facecolors="tab:blue" if ok else "none",
            zorder=3,
        )
        ax.annotate(
            r["configuration"] + (" (baseline)" if r["baseline"] else ""),
            (r["quality_overall"], r[speed]),
            textcoords="offset points",
            xytext=(6, 6),
        )
    ax.scatter([], [], s=90, facecolors="tab:blue", edgecolors="black", label="acceptable")
    ax.scatter([], [], s=90, facecolors="none", edgecolors="black", label="not acceptable")
    ax.set_xlabel("overall quality (mean of category scores, 0-1)")
    ax.set_ylabel(
        "output-token throughput (tokens/s)" if speed == "output_token_throughput" else "P50 decode rate (tokens/s)"
    )
    ax.set_xlim(0, 1)
    ax.set_ylim(bottom=0)
    ax.set_title("Speed against quality: pick the highest acceptable point")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    fig.tight_layout()
    return fig


def save(fig: Figure, name: str, out_dir: str | os.PathLike[str] = "results/plots") -> Path:
    """Writes ``fig`` to ``out_dir/name.png`` and closes it."""
    path = Path(out_dir) / f"{name}.png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return path


def plot_run(
    run_dir: str | os.PathLike[str], table: pd.DataFrame, out_dir: str | os.PathLike[str] = "results/plots"
) -> dict[str, Path]:
    """Every plot a run supports, saved as PNGs; returns name -> path."""
    run_dir = Path(run_dir)
    requests = {}
    for name in table["configuration"]:
        p = run_dir / name / "requests.parquet"
        try:
            requests[name] = pd.read_parquet(p) if p.exists() else journal_rows(run_dir / name)
        except (OSError, ValueError, pa.ArrowException):
            continue  # the comparison table reports the unreadable file
        if requests[name] is None:
            del requests[name]
    paths = {}
    if requests:
        paths["latency_percentiles"] = save(latency_percentiles(requests), "latency_percentiles", out_dir)
        paths["latency_cdfs"] = save(latency_cdfs(requests), "latency_cdfs", out_dir)
        paths["itl_distribution"] = save(itl_distribution(requests), "itl_distribution", out_dir)
    if "quality_overall" in table and table["quality_overall"].notna().any():
        paths["quality_by_category"] = save(quality_by_category(table), "quality_by_category", out_dir)
        paths["decision"] = save(decision_plot(table), "decision", out_dir)
    return paths
