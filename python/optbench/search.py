"""The highest load that meets an SLO: ``optbench.search`` and ``optbench search``.

The SLO is the load test's ``slo`` option (see :mod:`optbench.slo`). A *level* is a
concurrency (closed loop) or a request rate (open loop, ``over="request_rate"``). Each level is
run as ``trials`` independent load tests, and the level is judged on every requirement:

- *attainment* (when the SLO has per-request bounds): the share of requests meeting all of
  them must be at least ``target``;
- each percentile objective ``metric: {pQ: bound}``: the share of requests meeting ``bound``
  must be at least Q%.

**Common random numbers.** Trial ``j`` of every level sends the same prompts in the same order
(synthetic prompts drawn with seed ``seed + j``, or the caller's prompts) with the same
open-loop schedule seed (``seed + j``), so levels differ by their load alone. Warm-up requests
(``warmup``, or when it is 0 one per unit of load, at least 2) run first in each trial with
prompts of their own and count nowhere. A server with a prefix cache sees the same prompts
again at every level; turn its cache off for the strictest comparison.

**The interval on a share** is the wider of two 95% (``confidence``) intervals, i.e. the more
conservative: Wilson's score interval over the requests of all trials pooled, and Student's t
interval over the per-trial shares. Wilson alone treats requests as independent, but the
requests of one trial share the server's state (one stall delays many at once), so it is too
narrow when trials disagree; t alone has ``trials − 1`` degrees of freedom and no width at all
when every trial scores 100%, when it would claim certainty from a few dozen requests. Taking
the union keeps the sample-size width of Wilson and the between-trial width of t.

**Verdicts.** A requirement of share ``q`` is PASS when the interval's lower bound is at least
``q``, FAIL when its upper bound is below ``q``, else INCONCLUSIVE. A PASS also needs enough
requests: ``min_requests(q)`` (299 for a 99% claim at 95%, :func:`optbench.slo.min_requests`);
below that the requirement is INCONCLUSIVE and the result says the claim is refused. A level
is FAIL when a requirement fails, PASS when all pass, else INCONCLUSIVE; an INCONCLUSIVE level
gets one more trial at a time up to ``max_trials``, and stays INCONCLUSIVE (counted as not
passing) if the budget runs out.

**The search** starts at ``start`` and multiplies the level by ``factor`` while it passes (an
exponential bracket, up to ``max_level``), then bisects between the highest passing level and
the lowest level that did not pass, until they are at most ``tolerance`` apart (default 1 for
a concurrency; for a request rate 10% of the highest passing rate). It assumes attainment
falls as load grows. The answer is the highest passing level, the first failing level (the
lowest one above it that did not pass), goodput and throughput at both with t intervals over
their trials, the objective that binds (the one the fewest requests met at the first failing
level), the time spent, a plot of attainment against load (:func:`plot_search`), and a CSV and
JSON of every probe under ``results/searches/<id>/``.

**Constrained by quality** (``quality_dataset``, concurrency only): the highest passing level
must also keep the answers' quality on a slice of the quality dataset against concurrency 1,
else the search steps down among the passing levels; see :mod:`optbench.search_quality` for
the rule. ``time_budget_s`` covers the SLO search only, not the quality check.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd

from optbench.datasets import CATEGORIES
from optbench.driver import resolve_api_key
from optbench.exceptions import ConfigError
from optbench.files import atomic_path, atomic_write_text
from optbench.loadtest import LoadTestResult, load_test
from optbench.options import EvaluationOptions, LoadTestOptions, Options, option
from optbench.prompts import PromptSet, load_user_prompts, synthetic_prompts
from optbench.search_plot import plot_search
from optbench.slo import Objective, judge, min_requests, parse_slo, slo_label, t_interval, wilson_interval
from optbench.urls import without_credentials

PASS, FAIL, INCONCLUSIVE = "PASS", "FAIL", "INCONCLUSIVE"
#: Where the search's files go under the results folder.
SEARCHES_DIR = "searches"


@dataclass(frozen=True)
class SearchOptions(Options):
    """The parameters of a search for the highest load meeting an SLO (``optbench.search``);
    the load test of each trial is described by :class:`LoadTestOptions` (its ``slo`` is the SLO)."""

    section: ClassVar[str] = "search"

    over: Literal["concurrency", "request_rate"] = option(
        "concurrency", "what the load is: a closed loop's concurrency or an open loop's request rate"
    )
    target: float = option(
        0.99, "share of requests that must meet every per-request bound of the SLO", above=0, maximum=0.9999
    )
    start: float = option(1, "the first level tried", above=0)
    max_level: float = option(256, "the highest level tried", above=0, maximum=1_000_000)
    factor: float = option(2.0, "the bracket multiplies the level by this while it passes", above=1, maximum=100)
    tolerance: float | None = option(
        None,
        "stop when the highest passing and first failing levels are this close"
        " (None: 1 for a concurrency, a tenth of the highest passing rate)",
        above=0,
    )
    trials: int = option(3, "independent load tests per level", minimum=3, maximum=100)
    max_trials: int = option(8, "the most trials of a level that stays INCONCLUSIVE", minimum=3, maximum=1000)
    confidence: float = option(0.95, "confidence level of the intervals", above=0.5, maximum=0.999)
    max_probes: int = option(20, "the most levels tried", minimum=1, maximum=1000)
    time_budget_s: float | None = option(
        None,
        "stop starting trials after this many seconds (None: no limit; the quality check is not counted)",
        above=0,
        maximum=604_800,
    )
    quality_dataset: str | None = option(
        None,
        "quality constraint: the dataset file (optbench dataset build) whose answers at the found concurrency"
        " must keep the 5% rule against concurrency 1 (None: no quality constraint; concurrency only)",
        cli="PATH",
    )
    quality_categories: list[str] | None = option(
        None,
        "the categories of the quality slice (None: the quality options' categories, by default all)",
        keys=CATEGORIES,
        cli="LIST",
    )
    quality_limit: int | None = option(
        None,
        "at most this many prompts per category in the quality slice (None: the quality options' limit,"
        " by default all)",
        minimum=1,
    )
    quality_max_drop: float = option(
        0.05, "a quality drop: the slice's score below (1 - this) x concurrency 1's", minimum=0, maximum=0.99
    )
    quality_max_steps: int = option(
        3, "the most levels whose quality is checked (the first one included)", minimum=1, maximum=100
    )

    def _check_together(self) -> None:
        if self.max_trials < self.trials:
            raise ConfigError(f"max_trials ({self.max_trials}) must be at least trials ({self.trials})")
        if self.start > self.max_level:
            raise ConfigError(f"start ({self.start}) must be at most max_level ({self.max_level})")
        if self.over == "concurrency" and (not float(self.start).is_integer() or self.start < 1):
            raise ConfigError(f"start must be a whole concurrency of at least 1, got {self.start}")
        if self.quality_dataset is not None and self.over != "concurrency":
            raise ConfigError(
                "the quality constraint (quality_dataset) needs over='concurrency': quality under load compares "
                "answers at concurrency 1 and N, and a request rate has no fixed concurrency"
            )


@dataclass
class Requirement:
    """One thing a level must show: at least ``share`` of requests meet ``objectives``."""

    name: str
    share: float
    objectives: list[Objective]


@dataclass
class SearchResult:
    """What :func:`search` found.

    Attributes:
        highest_passing: the highest level judged PASS (None: not even ``start``).
        first_failing: the lowest level above it that did not pass (None: every level up to
            ``max_level`` passed), and ``first_failing_verdict`` (FAIL or INCONCLUSIVE).
        binding: the objective the fewest requests met at the first failing level (at the
            highest passing one when nothing failed).
        at_highest / at_first_failing: that level's row of ``levels`` as a dict.
        levels: one row per level tried: verdict, trials, pooled requests and good ones, the
            attainment and each requirement's share with its interval, goodput and throughput
            with t intervals over the trials, notes (a refused claim).
        probes: one row per trial: level, trial, requests, good, attainment, goodput, throughput.
        bracket: ``(highest passing, first failing)``; ``tolerance``: the stopping distance.
        elapsed_s: wall-clock time of the search. ``stopped``: why it ended.
        notes: what the numbers cannot claim (too few requests for a percentile claim...).
        files: what was written (``probes``, ``levels``, ``json``, ``plot``, and ``quality_<level>``).
        quality_level: with a quality constraint (``quality_dataset``), the highest level that
            meets the SLO and keeps quality (None: none does, or no constraint);
            ``bound_by``: ``"slo"`` or ``"quality"``, what limits the answer (``"slo"`` without a
            constraint); ``quality``: the check's settings, rule and checked levels;
            ``quality_results``: each checked level's answers (:mod:`optbench.search_quality`).
    """

    highest_passing: float | None
    first_failing: float | None
    first_failing_verdict: str | None
    binding: str | None
    at_highest: dict[str, Any] | None
    at_first_failing: dict[str, Any] | None
    levels: pd.DataFrame
    probes: pd.DataFrame
    over: str
    slo: str
    target: float | None
    tolerance: float
    elapsed_s: float
    stopped: str
    config: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)
    quality_level: float | None = None
    bound_by: str | None = None
    quality: dict[str, Any] = field(default_factory=dict)
    quality_results: dict[float, Any] = field(default_factory=dict)

    def summary_text(self) -> str:
        """The answer in a few lines, for terminals and logs."""
        unit = "concurrency" if self.over == "concurrency" else "request rate (req/s)"
        lines = [f"search over {unit} for SLO {self.slo}" + (f", target {self.target:g}" if self.target else "")]
        for _, r in self.levels.sort_values("level").iterrows():
            lines.append(
                f"  {level_text(r['level']):>8}  {r['verdict']:<12} attainment {r['attainment']:.3f} "
                f"[{r['attainment_low']:.3f}, {r['attainment_high']:.3f}]  {int(r['good'])}/{int(r['n'])} good, "
                f"{int(r['trials'])} trials"
            )
        if self.highest_passing is None:
            lines.append(f"no level passes: {level_text(self.first_failing)} is {self.first_failing_verdict}")
        else:
            h = self.at_highest or {}
            lines.append(
                f"highest passing {unit}: {level_text(self.highest_passing)} (goodput {_ci(h, 'goodput_rps')} req/s, "
                f"{_ci(h, 'goodput_tps')} tok/s; throughput {_ci(h, 'request_throughput')} req/s, "
                f"{_ci(h, 'output_token_throughput')} tok/s)"
            )
            if self.first_failing is None:
                lines.append(f"every level up to max_level passed ({self.stopped})")
            else:
                f = self.at_first_failing or {}
                lines.append(
                    f"first failing: {level_text(self.first_failing)} ({self.first_failing_verdict}; goodput "
                    f"{_ci(f, 'goodput_rps')} req/s, throughput {_ci(f, 'request_throughput')} req/s)"
                )
        if self.binding:
            lines.append(f"binding objective: {self.binding}")
        if self.quality:
            for level, q in self.quality["checked"].items():
                if q["verdict"] != "reference":
                    lines.append(
                        f"  quality at {level}: {q['score']:.4f} against {q['score_1']:.4f} at concurrency 1, change "
                        f"{q['change']:+.4f} [{q['change_low']:+.4f}, {q['change_high']:+.4f}]: {q['verdict']}"
                    )
            if self.quality_level is None:
                lines.append("no level meets both the SLO and the quality rule")
            else:
                bound = (
                    "no level up to max_level failed the SLO"
                    if self.bound_by == "slo" and self.first_failing is None
                    else f"bound by {self.bound_by}"
                )
                lines.append(
                    f"highest {unit} meeting the SLO and keeping quality: {level_text(self.quality_level)} ({bound})"
                )
        lines.append(f"tolerance {level_text(self.tolerance)}; {self.stopped}; {self.elapsed_s:.1f} s")
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary_text()

    def to_dict(self) -> dict[str, Any]:
        """The answer as JSON-ready values (``search.json``), probes and levels included."""
        return _jsonable(
            {
                "highest_passing": self.highest_passing,
                "first_failing": self.first_failing,
                "first_failing_verdict": self.first_failing_verdict,
                "binding": self.binding,
                "at_highest": self.at_highest,
                "at_first_failing": self.at_first_failing,
                "over": self.over,
                "slo": self.slo,
                "target": self.target,
                "tolerance": self.tolerance,
                "elapsed_s": self.elapsed_s,
                "stopped": self.stopped,
                "notes": self.notes,
                "quality_level": self.quality_level,
                "bound_by": self.bound_by,
                "quality": self.quality,
                "config": self.config,
                "levels": self.levels.to_dict(orient="records"),
                "probes": self.probes.to_dict(orient="records"),
            }
        )


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def level_text(level: float | None) -> str:
    """A level as tables show it: a whole concurrency without decimals, a rate with 4 digits."""
    if level is None:
        return "–"
    return str(int(level)) if float(level).is_integer() else f"{level:.4g}"


def _ci(row: Mapping[str, Any], name: str) -> str:
    mean, low, high = row.get(name), row.get(f"{name}_low"), row.get(f"{name}_high")
    if mean is None or not math.isfinite(mean):
        return "–"
    return f"{mean:.3g} [{low:.3g}, {high:.3g}]"


def requirements(objectives: list[Objective], target: float) -> list[Requirement]:
    """What a level must show: the attainment of the per-request bounds (when there are any)
    and each percentile objective's share."""
    reqs = []
    plain = [o for o in objectives if o.percentile is None]
    if plain:
        reqs.append(Requirement("attainment", target, plain))
    for o in objectives:
        if o.percentile is not None:
            reqs.append(Requirement(o.name, o.required_share or 0.0, [o]))
    return reqs


def share_interval(good: list[int], n: list[int], confidence: float) -> tuple[float, float, float]:
    """``(share, low, high)`` of the pooled share ``sum(good) / sum(n)``: the union of Wilson's
    interval over the pooled requests and Student's t interval over the per-trial shares."""
    total_good, total = sum(good), sum(n)
    if total == 0:
        return math.nan, 0.0, 1.0
    share = total_good / total
    w_low, w_high = wilson_interval(total_good, total, confidence)
    per_trial = [g / k for g, k in zip(good, n) if k > 0]
    _, t_low, t_high = t_interval(per_trial, confidence) if len(per_trial) > 1 else (share, share, share)
    return share, max(0.0, min(w_low, t_low)), min(1.0, max(w_high, t_high))


def judge_level(
    trials: list[pd.DataFrame], reqs: list[Requirement], confidence: float
) -> tuple[str, dict[str, Any], list[str]]:
    """The verdict of a level from its trials' judged rows (:func:`optbench.slo.judge`): the
    verdict, each requirement's share and interval (``<name>_share``, ``_low``, ``_high``,
    ``_verdict``), and notes on claims refused for too few requests."""
    out: dict[str, Any] = {}
    notes = []
    verdicts = []
    n = [len(t) for t in trials]
    for r in reqs:
        names = [o.name for o in r.objectives]
        good = [int(t[names].all(axis=1).sum()) if len(t) else 0 for t in trials]
        share, low, high = share_interval(good, n, confidence)
        need = min_requests(r.share, confidence)
        if high < r.share:
            verdict = FAIL
        elif sum(n) < need:
            verdict = INCONCLUSIVE
            notes.append(
                f"{r.name}: {sum(n)} requests cannot support a claim that {100 * r.share:g}% of requests meet it "
                f"at {100 * confidence:g}% confidence (that needs at least {need}); not claimed"
            )
        elif low >= r.share:
            verdict = PASS
        else:
            verdict = INCONCLUSIVE
        out.update(
            {f"{r.name}_share": share, f"{r.name}_low": low, f"{r.name}_high": high, f"{r.name}_verdict": verdict}
        )
        verdicts.append(verdict)
    level_verdict = FAIL if FAIL in verdicts else PASS if all(v == PASS for v in verdicts) else INCONCLUSIVE
    return level_verdict, out, notes


@dataclass
class _Trial:
    level: float
    trial: int
    result: LoadTestResult
    judged: pd.DataFrame
    wall_s: float


class _Searcher:
    """Runs trials, judges levels, keeps every probe."""

    def __init__(
        self,
        run_trial: Callable[[float, int], LoadTestResult],
        objectives: list[Objective],
        opts: SearchOptions,
        progress: Callable[[str], None] | None,
    ) -> None:
        self.run_trial = run_trial
        self.objectives = objectives
        self.opts = opts
        self.reqs = requirements(objectives, opts.target)
        self.progress = progress
        self.trials: dict[float, list[_Trial]] = {}
        self.levels: dict[float, dict[str, Any]] = {}
        self.notes: dict[float, list[str]] = {}
        self.started = time.monotonic()
        self.out_of_time = False

    def time_left(self) -> bool:
        budget = self.opts.time_budget_s
        if budget is not None and time.monotonic() - self.started >= budget:
            self.out_of_time = True
        return not self.out_of_time

    def _trial(self, level: float) -> None:
        j = len(self.trials.setdefault(level, []))
        t0 = time.monotonic()
        result = self.run_trial(level, j)
        judged = judge(result.requests, self.objectives)
        self.trials[level].append(_Trial(level, j, result, judged, time.monotonic() - t0))
        if self.progress:
            good, n = int(judged["good"].sum()), len(judged)
            self.progress(
                f"{self.opts.over} {level_text(level)} trial {j + 1}: {good}/{n} good"
                + (f" ({good / n:.3f})" if n else "")
            )

    def probe(self, level: float) -> str:
        """Runs ``level`` (``trials`` trials, more while INCONCLUSIVE) and returns its verdict."""
        if level in self.levels:
            return str(self.levels[level]["verdict"])
        verdict = INCONCLUSIVE
        row: dict[str, Any] = {}
        notes: list[str] = []
        while self.time_left():
            done = len(self.trials.get(level, []))
            if done >= self.opts.max_trials:
                break
            self._trial(level)
            if done + 1 < self.opts.trials:
                continue
            verdict, row, notes = judge_level([t.judged for t in self.trials[level]], self.reqs, self.opts.confidence)
            if verdict != INCONCLUSIVE:
                break
        if level not in self.trials:
            raise _OutOfTime
        if not row:
            verdict, row, notes = judge_level([t.judged for t in self.trials[level]], self.reqs, self.opts.confidence)
        if len(self.trials[level]) < self.opts.trials:
            verdict = INCONCLUSIVE
            notes.append(f"the time budget ran out after {len(self.trials[level])} of {self.opts.trials} trials")
        self.levels[level] = self._level_row(level, verdict, row)
        self.notes[level] = [f"{self.opts.over} {level_text(level)}: {n}" for n in notes]
        if self.progress:
            r = self.levels[level]
            self.progress(
                f"{self.opts.over} {level_text(level)}: {verdict} after {r['trials']} trials, attainment "
                f"{r['attainment']:.3f} [{r['attainment_low']:.3f}, {r['attainment_high']:.3f}]"
            )
        return verdict

    def _level_row(self, level: float, verdict: str, judged_row: dict[str, Any]) -> dict[str, Any]:
        trials = self.trials[level]
        good = [int(t.judged["good"].sum()) for t in trials]
        n = [len(t.judged) for t in trials]
        share, low, high = share_interval(good, n, self.opts.confidence)
        row: dict[str, Any] = {
            "level": level,
            "verdict": verdict,
            "trials": len(trials),
            "n": sum(n),
            "good": sum(good),
            "attainment": share,
            "attainment_low": low,
            "attainment_high": high,
        }
        for o in self.objectives:
            row[f"share {o.name}"] = float(pd.concat([t.judged[o.name] for t in trials]).mean()) if sum(n) else math.nan
        per_trial = self._per_trial(trials)
        for name in ("goodput_rps", "goodput_tps", "request_throughput", "output_token_throughput"):
            mean, lo, hi = t_interval(per_trial[name], self.opts.confidence)
            row.update({name: mean, f"{name}_low": lo, f"{name}_high": hi})
        row["wall_s"] = float(sum(t.wall_s for t in trials))
        row.update({k: v for k, v in judged_row.items() if k not in row})
        return row

    @staticmethod
    def _per_trial(trials: list[_Trial]) -> pd.DataFrame:
        rows = []
        for t in trials:
            s = t.result.summary
            d = s["duration_s"]
            good = t.judged["good"]
            rows.append(
                {
                    "goodput_rps": good.sum() / d if d > 0 else math.nan,
                    "goodput_tps": t.judged.loc[good, "output_tokens"].fillna(0).sum() / d if d > 0 else math.nan,
                    "request_throughput": s["request_throughput"],
                    "output_token_throughput": s["output_token_throughput"],
                }
            )
        return pd.DataFrame(rows)

    def binding(self, level: float | None) -> str | None:
        """The objective the fewest requests met at ``level``."""
        if level is None or level not in self.levels:
            return None
        row = self.levels[level]
        shares = {o.name: row[f"share {o.name}"] for o in self.objectives}
        worst = min(shares, key=lambda k: shares[k])
        return worst if shares[worst] < 1 else None

    def probes_table(self) -> pd.DataFrame:
        rows = []
        for level, trials in sorted(self.trials.items()):
            per = self._per_trial(trials)
            for t, (_, p) in zip(trials, per.iterrows()):
                n, good = len(t.judged), int(t.judged["good"].sum())
                row = {
                    "level": level,
                    "trial": t.trial,
                    "n": n,
                    "good": good,
                    "failed": int((~t.judged["ok"].astype(bool)).sum()),
                    "attainment": good / n if n else math.nan,
                    **{f"share {o.name}": float(t.judged[o.name].mean()) if n else math.nan for o in self.objectives},
                    **p.to_dict(),
                    "duration_s": t.result.summary["duration_s"],
                    "wall_s": t.wall_s,
                }
                rows.append(row)
        return pd.DataFrame(rows)


class _OutOfTime(Exception):
    """The time budget ran out before a level had its first trial."""


def _next_up(level: float, factor: float, integer: bool) -> float:
    up = level * factor
    return float(max(math.ceil(up), level + 1)) if integer else up


def _midpoint(low: float, high: float, integer: bool) -> float:
    return float((int(low) + int(high)) // 2) if integer else (low + high) / 2


def run_search(
    run_trial: Callable[[float, int], LoadTestResult],
    objectives: list[Objective],
    opts: SearchOptions,
    *,
    progress: Callable[[str], None] | None = None,
    config: dict[str, Any] | None = None,
) -> SearchResult:
    """The search itself over any way of running a trial: ``run_trial(level, j)`` runs trial
    ``j`` (from 0) at ``level`` and returns its :class:`~optbench.loadtest.LoadTestResult`.
    :func:`search` calls it with load tests of a server."""
    integer = opts.over == "concurrency"
    s = _Searcher(run_trial, objectives, opts, progress)
    lo: float | None = None
    hi: float | None = None
    stopped = "bracket within tolerance"
    level = float(opts.start)
    probes = 0
    try:
        while True:  # the exponential bracket
            probes += 1
            if s.probe(level) == PASS:
                lo = level
                if level >= opts.max_level:
                    stopped = "max_level reached: every level tried passed"
                    break
                level = min(_next_up(level, opts.factor, integer), float(opts.max_level))
                if probes >= opts.max_probes:
                    stopped = "max_probes reached"
                    break
            else:
                hi = level
                break
        while lo is not None and hi is not None and probes < opts.max_probes:  # bisection
            tol = opts.tolerance if opts.tolerance is not None else (1.0 if integer else 0.1 * lo)
            mid = _midpoint(lo, hi, integer)
            if hi - lo <= tol or mid <= lo or mid >= hi:
                break
            probes += 1
            if s.probe(mid) == PASS:
                lo = mid
            else:
                hi = mid
        else:
            if lo is not None and hi is not None:
                stopped = "max_probes reached"
    except _OutOfTime:
        stopped = "time budget spent"
    if s.out_of_time:
        stopped = "time budget spent"
    tolerance = opts.tolerance if opts.tolerance is not None else (1.0 if integer else 0.1 * (lo or opts.start))
    levels = pd.DataFrame([s.levels[k] for k in sorted(s.levels)])
    notes = [n for k in sorted(s.notes) for n in s.notes[k]]
    return SearchResult(
        highest_passing=lo,
        first_failing=hi,
        first_failing_verdict=None if hi is None else str(s.levels[hi]["verdict"]),
        binding=s.binding(hi) or s.binding(lo),
        at_highest=None if lo is None else dict(s.levels[lo]),
        at_first_failing=None if hi is None else dict(s.levels[hi]),
        levels=levels,
        probes=s.probes_table(),
        over=opts.over,
        slo=slo_label(objectives),
        target=opts.target if any(o.percentile is None for o in objectives) else None,
        tolerance=tolerance,
        elapsed_s=time.monotonic() - s.started,
        stopped=stopped,
        config=config or {},
        notes=notes,
    )


# --------------------------------------------------------------------------- against a server


class _Prompts:
    """The prompts of trial ``j``: the same measured prompts at every level (common random
    numbers), after warm-up prompts of their own."""

    def __init__(self, base_url: str, model: str, lt: LoadTestOptions, api_key: str | None) -> None:
        self.base_url, self.model, self.lt, self.api_key = base_url, model, lt, api_key
        self.user = load_user_prompts(lt.prompts) if lt.prompts is not None else None
        self.measured: dict[int, list[Any]] = {}
        self.warm: dict[tuple[int, int], list[Any]] = {}
        self.source = "user" if self.user is not None else ""

    def _synthetic(self, count: int, seed: int) -> list[Any]:
        ps = synthetic_prompts(
            self.base_url,
            self.model,
            count,
            self.lt.input_tokens,
            seed=seed % 2**64,
            tokenizer=self.lt.tokenizer,
            api_key=self.api_key,
        )
        self.source = ps.source
        return _items(ps)

    def for_trial(self, j: int, warmup: int) -> list[Any]:
        """``warmup`` warm-up prompts, then the ``num_requests`` measured prompts of trial ``j``."""
        n = self.lt.num_requests
        if j not in self.measured:
            if self.user is not None:
                items = _items(self.user)
                self.measured[j] = [items[i % len(items)] for i in range(n)]
            else:
                self.measured[j] = self._synthetic(n, self.lt.seed + j)
        if (j, warmup) not in self.warm:
            if self.user is not None:
                items = _items(self.user)
                self.warm[j, warmup] = [items[(n + i) % len(items)] for i in range(warmup)]
            else:  # another seed: warm-up prompts never repeat a measured one
                self.warm[j, warmup] = self._synthetic(warmup, self.lt.seed + j + 0x9E3779B97F4A7C15)
        return self.warm[j, warmup] + self.measured[j]


def _items(ps: PromptSet) -> list[Any]:
    return list(ps.texts if ps.texts is not None else ps.messages or [])


def search(
    base_url: str,
    model: str,
    options: LoadTestOptions | Mapping[str, Any] | None = None,
    *,
    search_options: SearchOptions | Mapping[str, Any] | None = None,
    quality_options: EvaluationOptions | Mapping[str, Any] | None = None,
    label: str | None = None,
    results_dir: str | os.PathLike[str] | None = "results",
    progress: bool | Callable[[str], None] = False,
    **values: Any,
) -> SearchResult:
    """Finds the highest concurrency (or request rate) whose SLO attainment meets a target; see
    the module's documentation for the method.

    ``options`` and the keyword arguments named like :class:`~optbench.options.LoadTestOptions`
    describe each trial's load test (``slo`` is required; ``num_requests`` is per trial;
    ``concurrency`` is set by the search, or caps an open loop); ``search_options`` and the
    keyword arguments named like :class:`SearchOptions` the search (``target``, ``trials``,
    ``over``...). ``results_dir``: where ``searches/<id>/`` gets ``probes.csv``,
    ``levels.csv``, ``search.json`` and ``attainment.png`` (None: nothing written).
    ``progress``: True prints a line per trial and level to stderr; a callable gets those lines.

    With ``quality_dataset`` set, the highest passing concurrency is then checked for quality
    (:mod:`optbench.search_quality`): ``quality_options`` (an
    :class:`~optbench.options.EvaluationOptions` or its fields: templates, ``max_tokens``...)
    says how the slice is prompted and scored; the answer is ``result.quality_level``.
    """
    search_names = {f.name for f in dataclasses.fields(SearchOptions)}
    s_values = {k: v for k, v in values.items() if k in search_names}
    lt_values = {k: v for k, v in values.items() if k not in search_names}
    opts = SearchOptions.make(search_options, **s_values)
    if opts.over == "request_rate":
        lt_values.setdefault("request_rate", float(opts.start))
        if "concurrency" not in lt_values and not (isinstance(options, Mapping) and "concurrency" in options):
            lt_values["concurrency"] = None  # an open loop without a cap unless one is given
    lt = LoadTestOptions.make(options, **lt_values)
    if not lt.slo:
        raise ConfigError("search needs an SLO: pass slo={...} (e.g. {'ttft_ms': 500, 'itl_ms': 50})")
    objectives = parse_slo(lt.slo)
    if results_dir is not None:
        from optbench.results import ensure_results_dir

        ensure_results_dir(results_dir)
    say: Callable[[str], None] | None
    if progress is True:
        say = lambda line: print(f"optbench search: {line}", file=sys.stderr, flush=True)  # noqa: E731
    else:
        say = progress or None
    integer = opts.over == "concurrency"

    def warmup_for(level: float) -> int:
        return lt.warmup if lt.warmup > 0 else max(2, math.ceil(level))

    prompt_sets = _Prompts(base_url, model, lt, resolve_api_key(lt.api_key_env))

    def run_trial(level: float, j: int) -> LoadTestResult:
        w = warmup_for(level)
        prompts = prompt_sets.for_trial(j, w)
        load = {"concurrency": int(level)} if integer else {"request_rate": float(level)}
        trial_opts = LoadTestOptions.make(lt, prompts=prompts, warmup=w, seed=lt.seed + j, **load)
        return load_test(base_url, model, trial_opts, label=f"{label or model} {level_text(level)}#{j}", progress=False)

    config = {
        "base_url": without_credentials(base_url),
        "model": model,
        "label": label,
        "search": opts.to_dict(),
        "load_test": {**lt.to_dict(), "prompts": None if lt.prompts is None else "(given)"},
    }
    result = run_search(run_trial, objectives, opts, progress=say, config=config)
    result.bound_by = None if result.highest_passing is None else "slo"
    if opts.quality_dataset is not None:
        from optbench.search_quality import check_quality

        check_quality(
            result, base_url, model, opts, evaluation=quality_options, api_key_env=lt.api_key_env,
            label=label or model, say=say,
        )  # fmt: skip
    if results_dir is not None:
        result.files = save_search(result, results_dir, label or model)
    return result


def save_search(result: SearchResult, results_dir: str | os.PathLike[str], label: str) -> dict[str, Path]:
    """Writes ``searches/<id>/``: ``probes.csv`` (every trial), ``levels.csv`` (every level),
    ``search.json`` (the answer, both tables included), ``attainment.png`` and, with a quality
    constraint, ``quality_<level>.parquet`` (each checked level's answers at 1 and at the level,
    item by item). Returns the paths."""
    from optbench.plots import save
    from optbench.results import new_run_id

    folder = Path(results_dir) / SEARCHES_DIR / new_run_id(label)
    folder.mkdir(parents=True, exist_ok=True)
    files = {"probes": folder / "probes.csv", "levels": folder / "levels.csv", "json": folder / "search.json"}
    for name in ("probes", "levels"):
        with atomic_path(files[name]) as tmp:
            getattr(result, name).to_csv(tmp, index=False)
    for level, checked in sorted(result.quality_results.items()):
        files[f"quality_{level_text(level)}"] = checked.to_parquet(folder / f"quality_{level_text(level)}.parquet")
    files["plot"] = save(plot_search(result), "attainment", folder)
    result.files = files
    meta = {**result.to_dict(), "written_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    meta["files"] = {k: str(v) for k, v in files.items()}
    atomic_write_text(files["json"], json.dumps(meta, indent=1, default=str) + "\n")
    return files


__all__ = [
    "FAIL",
    "INCONCLUSIVE",
    "PASS",
    "SearchOptions",
    "SearchResult",
    "judge_level",
    "level_text",
    "plot_search",
    "requirements",
    "run_search",
    "save_search",
    "search",
    "share_interval",
]
