"""Bootstrap intervals, the one way optbench puts an interval on a difference (quality under
load, ``optbench compare``).

Every interval here is a *percentile bootstrap*: the statistic is recomputed on ``resamples``
resamples drawn with replacement (numpy's PCG64 generator, seeded, so the same inputs give the
same interval), and the interval is the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of
those recomputed values. A difference is *real* at the level when its interval excludes 0.
"""

from __future__ import annotations

from collections.abc import Sequence

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
    "is_real",
    "percentile_interval",
    "resampled_means",
    "stratified_mean_of_means",
]
