"""The plot of a search (:func:`plot_search`): SLO attainment against load, with the quality
constraint's checked levels when there is one (:mod:`optbench.search`,
:mod:`optbench.search_quality`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from optbench.search import SearchResult


def plot_search(result: SearchResult) -> Any:
    """Attainment against load: each level's pooled attainment with its interval as a band,
    each trial as a dot, the verdicts as markers and the target as a line; with a quality
    constraint, each checked level as a marker at the top (a diamond keeps quality, a cross
    drops) and the answer as a dashed line when quality binds (a ``matplotlib.figure.Figure``)."""
    import matplotlib

    from optbench.search import FAIL, INCONCLUSIVE, PASS, level_text

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.8))
    lv = result.levels.sort_values("level") if len(result.levels) else result.levels
    if len(lv):
        ax.fill_between(
            lv["level"], lv["attainment_low"], lv["attainment_high"], alpha=0.25, label="interval", step=None
        )
        ax.plot(lv["level"], lv["attainment"], "-", color="C0", label="attainment (pooled)")
        colours = {PASS: "C2", FAIL: "C3", INCONCLUSIVE: "C1"}
        for verdict, colour in colours.items():
            sel = lv[lv["verdict"] == verdict]
            if len(sel):
                ax.errorbar(
                    sel["level"],
                    sel["attainment"],
                    yerr=[sel["attainment"] - sel["attainment_low"], sel["attainment_high"] - sel["attainment"]],
                    fmt="o",
                    color=colour,
                    capsize=4,
                    label=verdict,
                )
    if len(result.probes):
        ax.plot(result.probes["level"], result.probes["attainment"], ".", color="grey", alpha=0.6, label="trials")
    if result.target is not None:
        ax.axhline(result.target, color="k", linestyle="--", linewidth=1, label=f"target {result.target:g}")
    if result.highest_passing is not None:
        ax.axvline(result.highest_passing, color="C2", linestyle=":", linewidth=1)
    if "quality_verdict" in lv:
        for verdict, marker, colour in (("keeps quality", "D", "C4"), ("quality drop", "X", "C3")):
            sel = lv[lv["quality_verdict"] == verdict]
            if len(sel):
                ax.plot(sel["level"], [1.0] * len(sel), marker, color=colour, markersize=9, label=verdict)
        if result.quality_level is not None and result.bound_by == "quality":
            ax.axvline(result.quality_level, color="C4", linestyle="--", linewidth=1, label="meets SLO and quality")
    unit = "concurrency" if result.over == "concurrency" else "request rate (req/s)"
    ax.set_xlabel(unit)
    ax.set_ylabel("share of requests meeting the SLO")
    if len(lv) and lv["level"].max() / max(lv["level"].min(), 1e-9) >= 8:
        ax.set_xscale("log", base=2)
    if len(lv):
        ax.set_xticks(list(lv["level"]), [level_text(x) for x in lv["level"]])
        ax.minorticks_off()
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"SLO attainment against load ({result.slo})", fontsize=10)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return fig


__all__ = ["plot_search"]
