"""The quality rule, in one place: a category's score is the mean of its items' scores, the
overall score is the mean of the category scores, and a configuration is acceptable when its
overall score is at least ``1 - QUALITY_THRESHOLD`` (95%) of the baseline's. Evaluation, the
report and the plots all use these functions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from optbench.datasets import CATEGORIES
from optbench.exceptions import ConfigError

#: A candidate may lose at most this share of the baseline's overall quality.
QUALITY_THRESHOLD = 0.05


def category_scores(samples: pd.DataFrame) -> dict[str, float]:
    """The mean ``score`` of each category present in ``samples``, in the dataset's order."""
    out: dict[str, float] = {}
    for cat in CATEGORIES:
        rows = samples[samples["category"] == cat]
        if len(rows):
            out[cat] = float(rows["score"].mean())
    return out


def overall_score(scores: Mapping[str, float]) -> float:
    """The mean of the category scores (NaN when there are none)."""
    return float(np.mean(list(scores.values()))) if scores else math.nan


def acceptable(candidate: Any, baseline: Any, threshold: float = QUALITY_THRESHOLD) -> Any:
    """Whether ``candidate``'s overall score is at least ``1 - threshold`` times the
    baseline's (works element-wise on pandas columns)."""
    return candidate >= (1 - threshold) * baseline


def compare_quality(baseline: Any, candidate: Any, threshold: float = QUALITY_THRESHOLD) -> dict[str, Any]:
    """The quality verdict between two evaluations (``EvaluationResult`` objects or their
    ``summary`` dicts): the candidate is acceptable when its overall score is at least
    ``(1 - threshold)`` times the baseline's. Returns the overall scores, the relative change,
    ``acceptable`` and per-category ``baseline``/``candidate``/``delta``/``relative_change``."""
    if not 0 <= threshold < 1:
        raise ConfigError(f"threshold must be in [0, 1), got {threshold}")

    def summary(x: Any) -> Mapping[str, Any]:
        return x if isinstance(x, Mapping) else x.summary

    b, c = summary(baseline), summary(candidate)
    rel = (c["overall"] - b["overall"]) / b["overall"] if b["overall"] else float("nan")
    cats = {}
    for cat in b["categories"]:
        if cat in c["categories"]:
            bs, cs = b["categories"][cat]["score"], c["categories"][cat]["score"]
            cats[cat] = {
                "baseline": bs,
                "candidate": cs,
                "delta": cs - bs,
                "relative_change": (cs - bs) / bs if bs else float("nan"),
            }
    return {
        "baseline_overall": b["overall"],
        "candidate_overall": c["overall"],
        "relative_change": rel,
        "threshold": threshold,
        "acceptable": bool(acceptable(c["overall"], b["overall"], threshold)),
        "categories": cats,
    }


__all__ = ["QUALITY_THRESHOLD", "acceptable", "category_scores", "compare_quality", "overall_score"]
