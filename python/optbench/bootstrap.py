"""Bootstrap intervals, the one way optbench puts an interval on a difference (quality under
load, ``optbench compare``).

Every interval here is a *percentile bootstrap*: the statistic is recomputed on ``resamples``
resamples drawn with replacement (numpy's PCG64 generator, seeded, so the same inputs give the
same interval), spread about their mean by ``sqrt(n / (n - 1)) * t(n - 1) / z`` for ``n``
independent units resampled (:func:`expansion`: the widening of Hesterberg's expanded percentile
interval, without which 3 trials give a "95%" interval that covers ~75% of the time), and the
interval is the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of those values. A difference
is *real* at the level when its interval excludes 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist

import numpy as np

from optbench.exceptions import ConfigError

#: Resamples of every bootstrap unless told otherwise.
DEFAULT_RESAMPLES = 2000
#: The confidence level of every interval unless told otherwise.
DEFAULT_LEVEL = 0.95
#: Fewer resamples than this give intervals whose ends move from seed to seed.
MIN_RESAMPLES = 100
#: Above this the bootstrap would hold too much in memory for nothing.
MAX_RESAMPLES = 1_000_000


def check_settings(level: float, resamples: int, seed: int) -> None:
    """``ConfigError`` naming the setting when ``level``, ``resamples`` or ``seed`` is unusable."""
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level < 1:
        raise ConfigError(f"level must be a number between 0 and 1 (e.g. 0.95), got {level!r}")
    if isinstance(resamples, bool) or not isinstance(resamples, int) or not MIN_RESAMPLES <= resamples <= MAX_RESAMPLES:
        raise ConfigError(f"resamples must be an integer from {MIN_RESAMPLES} to {MAX_RESAMPLES}, got {resamples!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")


def student_t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t distribution with ``df`` degrees of freedom (scipy)."""
    from scipy import stats

    return float(stats.t.ppf(p, df))


def expansion(n: int, level: float) -> float:
    """How much to spread bootstrap replicates drawn from ``n`` independent units so that the
    percentile interval is as wide as Student's t makes it: ``sqrt(n / (n - 1)) * t(n - 1) / z``
    (Hesterberg's expanded percentile interval, 2015: the plain percentile interval is too narrow
    for small samples, e.g. covering ~75% instead of 95% with 3 trials). 1 for large ``n``."""
    if n < 2:
        return 1.0
    q = (1 + level) / 2
    return math.sqrt(n / (n - 1)) * student_t_quantile(q, n - 1) / NormalDist().inv_cdf(q)


def expand(replicates: np.ndarray, n: int, level: float) -> np.ndarray:
    """``replicates`` spread about their mean by :func:`expansion` (``n``: the units resampled);
    NaN for fewer than 2 units, which say nothing about their spread."""
    if n < 2:
        return np.full(np.shape(replicates), np.nan)
    center = np.nanmean(replicates) if np.isfinite(replicates).any() else np.nan
    return center + expansion(n, level) * (replicates - center)


def percentile_interval(values: np.ndarray, level: float) -> tuple[float, float]:
    """The ``level`` percentile interval of bootstrap ``values`` (NaN ends when none is finite)."""
    finite = values[np.isfinite(values)]
    if not len(finite):
        return float("nan"), float("nan")
    low, high = np.quantile(finite, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def is_real(low: float, high: float) -> bool:
    """Whether an interval excludes 0 (NaN ends: no)."""
    return bool(np.isfinite(low) and np.isfinite(high) and (low > 0 or high < 0))


def resampled_means(values: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """The mean of ``values`` over ``resamples`` resamples with replacement (one per row)."""
    values = np.asarray(values, dtype=float)
    if not len(values):
        return np.full(resamples, np.nan)
    idx = rng.integers(0, len(values), size=(resamples, len(values)))
    return values[idx].mean(axis=1)


def stratified_mean_of_means(
    groups: Sequence[np.ndarray], resamples: int, rng: np.random.Generator
) -> tuple[np.ndarray, list[np.ndarray]]:
    """The mean of the groups' means, items resampled within each group: the overall quality
    (the mean of the category means) recomputed per resample, and each group's resampled means."""
    per_group = [resampled_means(g, resamples, rng) for g in groups]
    if not per_group:
        return np.full(resamples, np.nan), []
    return np.mean(np.vstack(per_group), axis=0), per_group


__all__ = [
    "DEFAULT_LEVEL",
    "DEFAULT_RESAMPLES",
    "check_settings",
    "expand",
    "expansion",
    "is_real",
    "percentile_interval",
    "resampled_means",
    "stratified_mean_of_means",
    "student_t_quantile",
]
