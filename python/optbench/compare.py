"""Compare with confidence: is configuration B really faster (or better) than A, or is the gap
noise?

:func:`compare` takes two or more runs or configurations and reports, for each candidate against
the first (the baseline), the difference of each metric (candidate minus baseline, and relative
to the baseline) with a percentile bootstrap interval at ``level`` (95% by default; see
:mod:`optbench.bootstrap`). A difference is **real** when its interval excludes 0; otherwise
there is **no real difference** at that level.

Metrics: P50 and P99 TTFT, P50 tokens/s (the per-request decode rate), output-token throughput;
goodput (good requests and their output tokens per second) and SLO attainment when both sides
ran under the same SLO (the load test's ``slo`` option; :mod:`optbench.slo` judges each request);
overall and per-category quality when both sides have ``samples.parquet``. Each speed metric is computed
per trial exactly as the load test's summary computes it (over measured, successful requests;
throughput over the trial's measured window), then averaged over the trials.

How the requests are resampled (the unit must be what varies independently):

- with **3 or more trials** (``optbench run --trials K``): a two-stage bootstrap. Each resample
  draws K trials with replacement, then the requests of each drawn trial with replacement. The
  trial is the independent unit: requests of one run share the server's state (its queue, its
  batches, the machine's other load), so resampling requests alone would hide exactly the
  run-to-run variation that makes an identical configuration's P99 move between runs;
- with **1 or 2 trials**: requests are resampled within each trial (two trials cannot say how
  much runs vary). The interval then covers the variation between requests of a run, not
  between runs: a result says so in its ``notes``.

Quality: per-item scores; when both sides scored the same items (the same dataset), the
bootstrap is paired (an item resampled keeps both of its scores), items resampled within each
category; otherwise each side is resampled on its own.

A configuration's trials are ``requests.parquet`` (trial 1, what every other tool reads) and
``requests_trial2.parquet`` ... ``requests_trialK.parquet``; each is a whole load test with the
same options (the same prompts and seed).
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from optbench import bootstrap
from optbench.datasets import CATEGORIES
from optbench.exceptions import ConfigError
from optbench.loadtest import LoadTestResult

#: Trial 1's file; trial i >= 2 is ``requests_trial{i}.parquet``.
TRIAL_PARQUET = "requests.parquet"
#: From this many trials on, trials are resampled (then requests within each).
MIN_TRIALS_TO_RESAMPLE = 3
#: Below this many successful requests a P99's interval is rough (the 99th percentile of fewer
#: than ~300 values rests on its 3 largest); a comparison says so.
P99_MIN_REQUESTS = 299


def trial_parquet(trial: int) -> str:
    """The file name of a configuration's ``trial`` (1-based)."""
    return TRIAL_PARQUET if trial == 1 else f"requests_trial{trial}.parquet"


def trial_files(directory: str | os.PathLike[str]) -> list[Path]:
    """A configuration folder's trial files in trial order (``requests.parquet`` first)."""
    d = Path(directory)
    extra = []
    for p in d.glob("requests_trial*.parquet"):
        m = re.fullmatch(r"requests_trial(\d+)\.parquet", p.name)
        if m:
            extra.append((int(m.group(1)), p))
    first = [d / TRIAL_PARQUET] if (d / TRIAL_PARQUET).exists() else []
    return first + [p for _, p in sorted(extra)]


# --------------------------------------------------------------------------- what is compared


@dataclass
class Measurements:
    """One side of a comparison: its trials' measured request rows and its scored samples."""

    name: str
    trials: list[pd.DataFrame]
    samples: pd.DataFrame | None = None
    source: str = "<in memory>"
    #: The SLO the load tests ran under (the same in every trial), else None.
    slo: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.slo:  # each request judged once: a ``good`` column (NaN for requests that did not finish)
            self.trials = [_with_good(df, self.slo) for df in self.trials]

    @property
    def units(self) -> int:
        """The independent units resampled: the trials from 3 on, else the measured requests."""
        if len(self.trials) >= MIN_TRIALS_TO_RESAMPLE:
            return len(self.trials)
        return sum(len(_measured(df)) for df in self.trials)

    @property
    def resampling(self) -> str:
        if len(self.trials) >= MIN_TRIALS_TO_RESAMPLE:
            return f"{len(self.trials)} trials: trials resampled, then requests within each"
        return f"{len(self.trials)} trial(s): requests resampled within each trial"


def _measured(df: pd.DataFrame) -> pd.DataFrame:
    return df[~df["warmup"].astype(bool)] if "warmup" in df else df


def _window_s(measured: pd.DataFrame) -> float:
    """The measured window as the summary defines it: first scheduled start to last end."""
    if not len(measured):
        return float("nan")
    end = measured["done_ns"].fillna(measured["last_token_ns"]).fillna(measured["sent_ns"])
    return float((end.max() - measured["scheduled_ns"].min()) / 1e9)


def _with_good(df: pd.DataFrame, slo: dict[str, Any]) -> pd.DataFrame:
    """``df`` with ``good``: 1.0 when the request met every objective of ``slo``, 0.0 when not,
    NaN for a warm-up or cancelled request (left out of attainment, as ``optbench.slo`` does)."""
    from optbench.slo import judge, parse_slo

    judged = judge(df, parse_slo(slo))
    out = df.copy()
    out["good"] = np.nan
    out.loc[judged.index, "good"] = judged["good"].astype(float)
    return out


def _slo_of(configs: list[Any]) -> dict[str, Any] | None:
    """The SLO the trials' configs share (None when one has none or they differ)."""
    slos = [c.get("slo") if isinstance(c, dict) else None for c in configs]
    return slos[0] if slos and slos[0] and all(x == slos[0] for x in slos) else None


Target = Union[str, "os.PathLike[str]", LoadTestResult, Sequence[LoadTestResult], Measurements]


def _from_directory(d: Path, name: str | None = None) -> Measurements:
    files = trial_files(d)
    if not files:
        raise ConfigError(f"{d}: no requests.parquet (not a configuration's or a load test's folder)")
    label = name
    if label is None:
        meta = pq.read_schema(files[0]).metadata or {}
        label = meta.get(b"optbench.label", d.name.encode()).decode()
    samples = pd.read_parquet(d / "samples.parquet") if (d / "samples.parquet").exists() else None
    configs = [json.loads((pq.read_schema(f).metadata or {}).get(b"optbench.config", b"{}")) for f in files]
    return Measurements(label, [pd.read_parquet(f) for f in files], samples, str(d), _slo_of(configs))


def load_targets(target: Target) -> list[Measurements]:
    """What a target holds: a run folder (``results/runs/<id>``: each configuration, the
    baseline first), a configuration's folder, a load test's folder or ``requests.parquet``, a
    :class:`~optbench.LoadTestResult`, or a list of them (the trials of one configuration)."""
    if isinstance(target, Measurements):
        return [target]
    if isinstance(target, LoadTestResult):
        return [Measurements(target.label, [target.requests], slo=_slo_of([target.config]))]
    if isinstance(target, (str, os.PathLike)):
        path = Path(target)
        if path.is_file():
            config = json.loads((pq.read_schema(path).metadata or {}).get(b"optbench.config", b"{}"))
            return [Measurements(path.parent.name, [pd.read_parquet(path)], None, str(path), _slo_of([config]))]
        if not path.is_dir():
            raise ConfigError(f"{path}: no such run, configuration folder or requests.parquet")
        if (path / "meta.json").exists():
            meta = json.loads((path / "meta.json").read_text())
            return [_from_directory(path, meta.get("name", path.name))]
        if trial_files(path):
            return [_from_directory(path)]
        configs = []
        for meta_file in sorted(path.glob("*/meta.json"), key=lambda p: p.stat().st_mtime):
            meta = json.loads(meta_file.read_text())
            if trial_files(meta_file.parent):
                configs.append((bool(meta.get("baseline")), _from_directory(meta_file.parent, meta.get("name"))))
        if not configs:
            raise ConfigError(f"{path}: no configuration with a requests.parquet (*/meta.json) found")
        base = next((i for i, (b, _) in enumerate(configs) if b), 0)
        ordered = [configs[base][1]] + [m for i, (_, m) in enumerate(configs) if i != base]
        return ordered
    trials = [t for t in target if isinstance(t, LoadTestResult)] if isinstance(target, Sequence) else []
    if trials and len(trials) == len(target):
        return [Measurements(trials[0].label, [t.requests for t in trials], slo=_slo_of([t.config for t in trials]))]
    raise ConfigError(
        f"cannot compare a {type(target).__name__}: give run or configuration folders, requests.parquet files "
        "or LoadTestResult objects"
    )


# --------------------------------------------------------------------------- metrics


@dataclass(frozen=True)
class SpeedMetric:
    """A speed metric: per-request ``values`` of a trial's measured rows, and the ``statistic``
    of resampled value rows (a 2-D array, one resample per row) given the trial's window."""

    name: str
    label: str
    higher_is_better: bool
    values: Callable[[pd.DataFrame], np.ndarray]
    statistic: Callable[[np.ndarray, float], np.ndarray]
    available: Callable[[pd.DataFrame], bool] = lambda df: True


def _latency(column: str) -> Callable[[pd.DataFrame], np.ndarray]:
    def values(df: pd.DataFrame) -> np.ndarray:
        v = pd.to_numeric(df[column], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        return np.where(df["success"].to_numpy(dtype=bool), v, np.nan)  # failed requests never enter latency

    return values


def row_quantiles(rows: np.ndarray, q: float) -> np.ndarray:
    """The ``q`` quantile of each row, NaNs left out, interpolating linearly between the nearest
    ranks (``np.nanquantile(rows, q, axis=1)``'s numbers, without its per-row Python loop); NaN
    for a row without values."""
    ordered = np.sort(rows, axis=1)  # NaNs sort last
    count = np.sum(~np.isnan(rows), axis=1)
    pos = q * np.maximum(count - 1, 0)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, np.maximum(count - 1, 0))
    below = np.take_along_axis(ordered, lo[:, None], axis=1)[:, 0]
    above = np.take_along_axis(ordered, hi[:, None], axis=1)[:, 0]
    out = below + (pos - lo) * (above - below)
    return np.where(count > 0, out, np.nan)


def _quantile(q: float) -> Callable[[np.ndarray, float], np.ndarray]:
    def statistic(rows: np.ndarray, window_s: float) -> np.ndarray:
        return row_quantiles(rows, q)

    return statistic


def _ok_tokens(df: pd.DataFrame) -> np.ndarray:
    tokens = pd.to_numeric(df["output_tokens"], errors="coerce").fillna(0).to_numpy(dtype=float)
    return np.where(df["success"].to_numpy(dtype=bool), tokens, 0.0)


def _good(df: pd.DataFrame) -> np.ndarray:
    """1 per good request, 0 otherwise (goodput counts)."""
    return df["good"].fillna(0.0).to_numpy(dtype=float)


def _good_tokens(df: pd.DataFrame) -> np.ndarray:
    return _good(df) * _ok_tokens(df)


def _good_or_nan(df: pd.DataFrame) -> np.ndarray:
    """1 or 0 per finished request, NaN for one that did not finish (attainment's share)."""
    return df["good"].to_numpy(dtype=float)


def _per_second(rows: np.ndarray, window_s: float) -> np.ndarray:
    return rows.sum(axis=1) / window_s if window_s > 0 else np.full(len(rows), np.nan)


def _share(rows: np.ndarray, window_s: float) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample without a finished request: NaN
        return np.nanmean(rows, axis=1)


def _judged(df: pd.DataFrame) -> bool:
    return "good" in df


SPEED_METRICS: tuple[SpeedMetric, ...] = (
    SpeedMetric("ttft_p50_ms", "P50 TTFT (ms)", False, _latency("ttft_ms"), _quantile(0.5)),
    SpeedMetric("ttft_p99_ms", "P99 TTFT (ms)", False, _latency("ttft_ms"), _quantile(0.99)),
    SpeedMetric("tokens_per_s_p50", "P50 tokens/s", True, _latency("tokens_per_s"), _quantile(0.5)),
    SpeedMetric("output_token_throughput", "output tokens/s", True, _ok_tokens, _per_second),
    SpeedMetric("goodput_rps", "goodput (good req/s)", True, _good, _per_second, _judged),
    SpeedMetric("goodput_tps", "goodput (good tokens/s)", True, _good_tokens, _per_second, _judged),
    SpeedMetric("attainment", "SLO attainment", True, _good_or_nan, _share, _judged),
)


def _speed_point(m: Measurements, metric: SpeedMetric) -> float:
    """The metric of each trial (all its measured requests), averaged over the trials."""
    per_trial = []
    for df in m.trials:
        measured = _measured(df)
        if len(measured):
            per_trial.append(float(metric.statistic(metric.values(measured)[None, :], _window_s(measured))[0]))
    return float(np.mean(per_trial)) if per_trial else float("nan")


def _speed_resampled(m: Measurements, metric: SpeedMetric, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """The metric recomputed on ``resamples`` bootstrap resamples (see the module's doc)."""
    k = len(m.trials)
    if k >= MIN_TRIALS_TO_RESAMPLE:
        chosen = rng.integers(0, k, size=(resamples, k))
    else:
        chosen = np.broadcast_to(np.arange(k), (resamples, k))
    stats = np.full((resamples, k), np.nan)
    for t, df in enumerate(m.trials):
        mask = chosen == t
        count = int(mask.sum())
        measured = _measured(df)
        if not count or not len(measured):
            continue
        values = metric.values(measured)
        idx = rng.integers(0, len(values), size=(count, len(values)))
        stats[mask] = metric.statistic(values[idx], _window_s(measured))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(stats, axis=1)


def _quality_pairs(a: pd.DataFrame, b: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray, bool]]:
    """Per category: the scores of each side and whether they are paired (the same items)."""
    out = {}
    for cat in CATEGORIES:
        sa, sb = a[a["category"] == cat], b[b["category"] == cat]
        if not len(sa) or not len(sb):
            continue
        ids_a, ids_b = list(sa["id"]), list(sb["id"])
        if sorted(ids_a) == sorted(ids_b) and len(set(ids_a)) == len(ids_a):
            sb = sb.set_index("id").loc[ids_a].reset_index()
            out[cat] = (sa["score"].to_numpy(dtype=float), sb["score"].to_numpy(dtype=float), True)
        else:
            out[cat] = (sa["score"].to_numpy(dtype=float), sb["score"].to_numpy(dtype=float), False)
    return out


def _quality_resampled(
    pairs: dict[str, tuple[np.ndarray, np.ndarray, bool]], resamples: int, rng: np.random.Generator
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per category and ``overall``: each side's mean score on each resample."""
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for cat, (a, b, paired) in pairs.items():
        ia = rng.integers(0, len(a), size=(resamples, len(a)))
        ib = ia if paired else rng.integers(0, len(b), size=(resamples, len(b)))
        out[cat] = (a[ia].mean(axis=1), b[ib].mean(axis=1))
    if out:
        out["overall"] = (
            np.mean([v[0] for v in out.values()], axis=0),
            np.mean([v[1] for v in out.values()], axis=0),
        )
    return out


# --------------------------------------------------------------------------- the comparison


@dataclass
class Comparison:
    """Every candidate against the baseline (the first), metric by metric.

    ``table`` has one row per candidate and metric: ``baseline``, ``candidate``, ``metric``,
    ``label``, ``higher_is_better``, ``baseline_value``, ``candidate_value``, ``difference``
    (candidate minus baseline) with ``low`` / ``high``, ``relative`` (difference / baseline) with
    ``relative_low`` / ``relative_high``, ``real`` (the interval excludes 0), ``verdict``
    (``better``, ``worse`` or ``no real difference``), ``trials_baseline`` / ``trials_candidate``
    and ``paired`` (quality only)."""

    table: pd.DataFrame
    names: list[str]
    level: float
    resamples: int
    seed: int
    notes: list[str] = field(default_factory=list)

    @property
    def baseline(self) -> str:
        return self.names[0]

    def row(self, candidate: str, metric: str) -> dict[str, Any]:
        """The comparison of ``candidate`` with the baseline on ``metric``."""
        t = self.table
        hit = t[(t["candidate"] == candidate) & (t["metric"] == metric)]
        if not len(hit):
            raise KeyError(f"no {metric!r} comparison for {candidate!r} (have: {sorted(set(t['metric']))})")
        return dict(hit.iloc[0])

    def real(self, candidate: str, metric: str) -> bool:
        """Whether ``candidate`` differs from the baseline on ``metric`` at the level."""
        return bool(self.row(candidate, metric)["real"])

    def sentence(self, candidate: str, metric: str = "output_token_throughput") -> str:
        """The difference in words: "B is faster than A by 12% [8%, 16%] in output tokens/s
        (95% bootstrap interval)", or "no real difference ..." when the interval covers 0."""
        r = self.row(candidate, metric)
        pct = f"{100 * self.level:.0f}% bootstrap interval"
        rel, lo, hi = r["relative"], r["relative_low"], r["relative_high"]
        if not r["real"]:
            return (
                f"no real difference between {candidate} and {r['baseline']} in {r['label']} "
                f"({_signed_pct(rel)} [{_signed_pct(lo)}, {_signed_pct(hi)}], {pct})"
            )
        up = rel > 0
        if metric in ("output_token_throughput", "tokens_per_s_p50", "goodput_rps", "goodput_tps"):
            word = "faster" if up else "slower"
            return f"{candidate} is {word} than {r['baseline']} by {_abs_interval(rel, lo, hi)} in {r['label']} ({pct})"
        word = "higher" if up else "lower"
        return f"{candidate}'s {r['label']} is {_abs_interval(rel, lo, hi)} {word} than {r['baseline']}'s ({pct})"

    def __str__(self) -> str:
        lines = [
            f"against {self.baseline}: value -> value, relative difference with its {100 * self.level:.0f}% "
            f"bootstrap interval ({self.resamples} resamples, seed {self.seed}), verdict"
        ]
        for cand in self.names[1:]:
            lines.append(f"{cand}:")
            for _, r in self.table[self.table["candidate"] == cand].iterrows():
                lines.append(
                    f"  {r['label']:<26} {_num(r['baseline_value']):>10} -> {_num(r['candidate_value']):>10}  "
                    f"{_signed_pct(r['relative']):>8} [{_signed_pct(r['relative_low'])}, {_signed_pct(r['relative_high'])}]"
                    f"  {r['verdict']}"
                )
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


def _num(x: float) -> str:
    return "–" if not np.isfinite(x) else f"{x:,.3f}" if abs(x) < 10 else f"{x:,.1f}"


def _signed_pct(x: float) -> str:
    return "–" if not np.isfinite(x) else f"{100 * x:+.1f}%"


def _abs_interval(rel: float, lo: float, hi: float) -> str:
    """ "12% [8%, 16%]" for a relative change and its interval, without the sign."""
    if rel < 0:
        rel, lo, hi = -rel, -hi, -lo
    return f"{100 * rel:.1f}% [{100 * lo:.1f}%, {100 * hi:.1f}%]"


def _row(
    base: Measurements,
    cand: Measurements,
    metric: str,
    label: str,
    higher: bool,
    point: tuple[float, float],
    samples: tuple[np.ndarray, np.ndarray],
    level: float,
    units: int,
) -> dict[str, Any]:
    (a, b), (ra, rb) = point, samples
    diff = bootstrap.expand(rb - ra, units, level)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = bootstrap.expand(rb / ra - 1, units, level)
    low, high = bootstrap.percentile_interval(diff, level)
    rlow, rhigh = bootstrap.percentile_interval(rel, level)
    real = bootstrap.is_real(low, high)
    d = b - a
    return {
        "baseline": base.name,
        "candidate": cand.name,
        "metric": metric,
        "label": label,
        "higher_is_better": higher,
        "baseline_value": a,
        "candidate_value": b,
        "difference": d,
        "low": low,
        "high": high,
        "relative": d / a if a else float("nan"),
        "relative_low": rlow,
        "relative_high": rhigh,
        "real": real,
        "verdict": ("better" if (d > 0) == higher else "worse") if real else "no real difference",
        "trials_baseline": len(base.trials),
        "trials_candidate": len(cand.trials),
    }


def compare(
    *targets: Target,
    level: float = bootstrap.DEFAULT_LEVEL,
    resamples: int = bootstrap.DEFAULT_RESAMPLES,
    seed: int = 0,
) -> Comparison:
    """Compares two or more runs or configurations: each against the first (see the module's doc).

    Each target is a run folder (``results/runs/<id>``: all its configurations, the baseline
    first), a configuration's folder (``results/runs/<id>/<config>``), a load test's folder or
    ``requests.parquet``, a :class:`~optbench.LoadTestResult`, or a list of LoadTestResults
    (one configuration's trials). ``level``: the intervals' confidence level; ``resamples``:
    bootstrap resamples; ``seed``: the same inputs and seed give the same intervals.
    """
    bootstrap.check_settings(level, resamples, seed)
    sides = [m for t in targets for m in load_targets(t)]
    if len(sides) < 2:
        raise ConfigError(f"compare needs at least two runs or configurations, got {len(sides)}")
    names = [m.name for m in sides]
    if len(set(names)) != len(names):  # the same name twice (two runs of one configuration): number them
        names = [f"{n} #{i + 1}" if names.count(n) > 1 else n for i, n in enumerate(names)]
        for m, n in zip(sides, names):
            m.name = n
    notes: list[str] = []
    for m in sides:
        if len(m.trials) < MIN_TRIALS_TO_RESAMPLE:
            notes.append(
                f"{m.name}: {m.resampling}; the interval leaves out how much whole runs vary "
                f"(use optbench run --trials {MIN_TRIALS_TO_RESAMPLE} or more)"
            )
        ok = sum(int(_measured(df)["success"].sum()) for df in m.trials) / max(len(m.trials), 1)
        if ok < P99_MIN_REQUESTS:
            notes.append(
                f"{m.name}: {ok:.0f} successful requests per trial; a P99 from fewer than {P99_MIN_REQUESTS} is rough"
            )
    for m in sides[1:]:
        if sides[0].slo != m.slo and sides[0].slo and m.slo:
            notes.append(f"{m.name}: goodput and attainment not compared: its SLO differs from {sides[0].name}'s")
    # One random stream per side and metric, so a side resamples the same way in every pair.
    speed: dict[tuple[int, str], np.ndarray] = {}
    base = sides[0]
    rows = []
    for j, cand in enumerate(sides[1:], 1):
        for k, metric in enumerate(SPEED_METRICS):
            if not all(metric.available(df) for m in (base, cand) for df in m.trials) or base.slo != cand.slo:
                continue
            for i in (0, j):
                if (i, metric.name) not in speed:
                    rng = np.random.default_rng([seed, i, k])
                    speed[(i, metric.name)] = _speed_resampled(sides[i], metric, resamples, rng)
            rows.append(
                _row(
                    base,
                    cand,
                    metric.name,
                    metric.label,
                    metric.higher_is_better,
                    (_speed_point(base, metric), _speed_point(cand, metric)),
                    (speed[(0, metric.name)], speed[(j, metric.name)]),
                    level,
                    min(base.units, cand.units),
                )
            )
        if base.samples is not None and cand.samples is not None:
            pairs = _quality_pairs(base.samples, cand.samples)
            resampled = _quality_resampled(pairs, resamples, np.random.default_rng([seed, 0, j, len(SPEED_METRICS)]))
            points = {cat: (float(a.mean()), float(b.mean())) for cat, (a, b, _) in pairs.items()}
            if points:
                points["overall"] = (
                    float(np.mean([p[0] for p in points.values()])),
                    float(np.mean([p[1] for p in points.values()])),
                )
            for cat in ["overall", *[c for c in CATEGORIES if c in pairs]]:
                if cat not in resampled:
                    continue
                units = sum(len(p[0]) for p in pairs.values()) if cat == "overall" else len(pairs[cat][0])
                row = _row(
                    base, cand, f"quality_{cat}", f"{cat} quality", True, points[cat], resampled[cat], level, units
                )
                row["paired"] = all(p for _, _, p in pairs.values()) if cat == "overall" else pairs[cat][2]
                rows.append(row)
    table = pd.DataFrame(rows)
    return Comparison(table=table, names=names, level=level, resamples=resamples, seed=seed, notes=notes)


def recommendation_sentence(baseline_dir: str | os.PathLike[str], candidate_dir: str | os.PathLike[str]) -> str:
    """The report's sentence on the recommended configuration's output-token throughput
    against the baseline's, or "" when either lacks its requests."""
    try:
        c = compare(baseline_dir, candidate_dir)
        return c.sentence(c.names[1], "output_token_throughput")
    except (ConfigError, KeyError, OSError, ValueError):
        return ""


__all__ = [
    "Comparison",
    "Measurements",
    "SPEED_METRICS",
    "compare",
    "load_targets",
    "recommendation_sentence",
    "trial_files",
    "trial_parquet",
]
