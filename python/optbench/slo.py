"""Request-level service-level objectives (SLOs): which requests are good, attainment, goodput.

An SLO is a table of objectives, metric → bound in milliseconds::

    {"ttft_ms": 500, "itl_ms": 50}                 # every request: TTFT ≤ 500 and ITL ≤ 50
    {"ttft_ms": {"p99": 500}, "e2e_ms": 8000}      # P99 TTFT ≤ 500, and every E2E ≤ 8000

The metrics, per request (``optbench`` measures them; see the README's metric definitions):

- ``ttft_ms``: time to the first token;
- ``itl_ms``: the request's *mean* inter-token gap (the mean of its ``itl_ms`` list). The mean,
  not the largest gap, is the rule: one scheduling hiccup of a few milliseconds should not
  make a 500-token answer bad; ``itl_max_ms`` states the stricter rule where it is wanted;
- ``itl_max_ms``: the request's largest inter-token gap;
- ``tpot_ms``: (E2E − TTFT) / (output tokens − 1);
- ``e2e_ms``: time to the last token.

A bound is either a number, a *per-request* objective (the request must meet it), or a table
``{"pQ": bound}`` (Q in (0, 100), e.g. ``p50``, ``p99``, ``p99.9``), a *percentile* objective:
the Q-th percentile of the metric over the measured requests must be at most ``bound``, which
is the same as "at least Q% of the requests meet ``bound``". A metric may carry several.

**A request is good** when it finished without error and meets the bound of every objective
(per-request and percentile alike). A request with one output token has no gap: its ITL and
TPOT objectives hold. Failed requests are never good.

**Attainment** = good requests / finished measured requests (warm-up rows excluded; requests
cut short by Ctrl-C or a time limit, error kind ``cancelled``, did not finish and are left
out). Its interval is Wilson's score interval (at ``confidence``, 95% by default).

**Goodput** = good requests per second and good requests' output tokens per second over the
measured window (``summary["duration_s"]``: from the first measured request's scheduled start
to the last one's end), next to the throughput over the same window.

**The SLO is met** (``slo_met``) when every percentile objective holds: the share of requests
meeting its bound is at least Q%. Per-request objectives make no claim about the run on their
own: their attainment is what :func:`optbench.search` sets a target on.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from optbench.exceptions import ConfigError

#: The metrics an objective may bound.
SLO_METRICS: tuple[str, ...] = ("ttft_ms", "itl_ms", "itl_max_ms", "tpot_ms", "e2e_ms")
#: The confidence level of the intervals unless stated.
CONFIDENCE = 0.95

_PERCENTILE = re.compile(r"^p(\d{1,2}(?:\.\d+)?)$")


@dataclass(frozen=True)
class Objective:
    """One objective: ``metric`` ≤ ``bound_ms`` for every request (``percentile`` None) or for
    at least ``percentile`` % of them."""

    metric: str
    bound_ms: float
    percentile: float | None = None

    @property
    def name(self) -> str:
        """``ttft_ms<=500`` or ``ttft_ms:p99<=500`` (the CLI's spelling)."""
        q = "" if self.percentile is None else f":p{_num(self.percentile)}"
        return f"{self.metric}{q}<={_num(self.bound_ms)}"

    @property
    def required_share(self) -> float | None:
        """The share of requests that must meet the bound: Q/100, or None for a per-request one."""
        return None if self.percentile is None else self.percentile / 100


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


# --------------------------------------------------------------------------- parsing


def slo_problem(spec: Any) -> str | None:
    """None when ``spec`` is a valid SLO table, else what is wrong (to follow the option's
    name: ``".ttft_ms must be above 0, got -1"``); None (no SLO) is valid."""
    if spec is None:
        return None
    if not isinstance(spec, Mapping) or not spec:
        return " must be a non-empty table of metric: bound (e.g. {'ttft_ms': 500})"
    for metric, bound in spec.items():
        if metric not in SLO_METRICS:
            return f" has {metric!r}, which is not one of {', '.join(SLO_METRICS)}"
        targets = bound.items() if isinstance(bound, Mapping) else [(None, bound)]
        if isinstance(bound, Mapping) and not bound:
            return f".{metric} must name at least one percentile, e.g. {{'p99': 500}}"
        for q, value in targets:
            where = f".{metric}" + (f".{q}" if q is not None else "")
            if q is not None:
                m = _PERCENTILE.match(str(q))
                if m is None or not 0 < float(m.group(1)) < 100:
                    return f"{where}: a percentile is p followed by a number in (0, 100), e.g. p99 or p99.9"
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return f"{where} must be a number of milliseconds, got {value!r}"
            if not math.isfinite(value) or value <= 0:
                return f"{where} must be a finite number above 0, got {value!r}"
    return None


def parse_slo(spec: Mapping[str, Any]) -> list[Objective]:
    """The objectives of an SLO table (see the module's documentation); ``ConfigError`` when it
    is not valid."""
    problem = slo_problem(spec)
    if problem is not None:
        raise ConfigError(f"slo{problem}")
    objectives = []
    for metric, bound in spec.items():
        if isinstance(bound, Mapping):
            for q, value in bound.items():
                objectives.append(Objective(metric, float(value), float(str(q)[1:])))
        else:
            objectives.append(Objective(metric, float(bound)))
    return objectives


def parse_slo_text(text: str) -> dict[str, Any]:
    """The command line's SLO: ``ttft_ms=500,itl_ms=50`` (per-request bounds), with
    ``metric:pQ=bound`` for a percentile objective (``ttft_ms:p99=500``), or a JSON table.
    Raises ``ValueError`` saying what is wrong (argparse shows it with the flag)."""
    text = text.strip()
    if text.startswith("{"):
        try:
            table = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(table, dict):
            raise ValueError('a JSON SLO must be a table, e.g. {"ttft_ms": 500}')
        return table
    spec: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"{part!r} is not metric=bound (e.g. ttft_ms=500 or ttft_ms:p99=500)")
        try:
            bound = float(value)
        except ValueError:
            raise ValueError(f"{part!r}: the bound {value.strip()!r} is not a number") from None
        metric, _, q = key.strip().partition(":")
        if q:
            table = spec.setdefault(metric, {})
            if not isinstance(table, dict):
                raise ValueError(f"{metric} has both a per-request bound and a percentile")
            table[q.strip()] = bound
        elif metric in spec:
            raise ValueError(f"{metric} is given twice")
        else:
            spec[metric] = bound
    if not spec:
        raise ValueError("an SLO needs at least one metric=bound")
    return spec


def slo_label(objectives: list[Objective]) -> str:
    """The SLO in one line: ``ttft_ms<=500, itl_ms<=50``."""
    return ", ".join(o.name for o in objectives)


# --------------------------------------------------------------------------- intervals


def wilson_interval(good: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson's score interval for the share ``good / n`` (``(0, 1)`` when ``n`` is 0)."""
    from scipy import stats  # here: importing optbench stays quick

    if n == 0:
        return 0.0, 1.0
    ci = stats.binomtest(int(good), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def t_interval(values: Any, confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """``(mean, low, high)``: Student's t interval for the mean of ``values`` (``low == high``
    with one value or none that differ; NaN with none)."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if len(x) == 1:
        return mean, mean, mean
    half = float(stats.t.ppf(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return mean, mean - half, mean + half


def min_requests(share: float, confidence: float = CONFIDENCE) -> int:
    """The fewest requests that can support "at least ``share`` of requests meet the bound" at
    ``confidence`` (one-sided): even with every request good, the exact (Clopper-Pearson) lower
    bound is ``(1 - confidence) ** (1 / n)``, which reaches ``share`` only from
    ``n = ceil(ln(1 - confidence) / ln(share))``: 299 for a P99 claim at 95%, 59 for P95, 29 for P90."""
    if not 0 < share < 1:
        return 1
    return math.ceil(math.log(1 - confidence) / math.log(share) - 1e-9)


# --------------------------------------------------------------------------- per request


def request_metrics(rows: pd.DataFrame) -> pd.DataFrame:
    """The measured, finished requests of a load test's rows (warm-up and ``cancelled`` rows
    left out) with the SLO metrics per request: ``ok`` (no error), ``ttft_ms``, ``itl_ms``
    (mean gap), ``itl_max_ms`` (largest gap), ``tpot_ms``, ``e2e_ms`` and ``output_tokens``."""
    df = rows
    if "warmup" in df:
        df = df[~df["warmup"].astype(bool)]
    if "error_kind" in df:
        df = df[df["error_kind"].ne("cancelled") | df["error_kind"].isna()]
    out = pd.DataFrame(index=df.index)
    out["ok"] = df["error_kind"].isna() if "error_kind" in df else True
    for m in ("ttft_ms", "tpot_ms", "e2e_ms", "output_tokens"):
        out[m] = pd.to_numeric(df[m], errors="coerce") if m in df else np.nan
    gaps = df["itl_ms"] if "itl_ms" in df else pd.Series([[]] * len(df), index=df.index)
    out["itl_ms"] = [float(np.mean(g)) if g is not None and len(g) else np.nan for g in gaps]
    out["itl_max_ms"] = [float(np.max(g)) if g is not None and len(g) else np.nan for g in gaps]
    return out


def judge(rows: pd.DataFrame, objectives: list[Objective]) -> pd.DataFrame:
    """:func:`request_metrics` plus, per objective, whether each request meets it (a column
    named after :attr:`Objective.name`) and ``good``: ok and every objective met. A missing
    ITL or TPOT (one output token) meets its objective; a missing TTFT or E2E (a failure) does not."""
    out = request_metrics(rows)
    good = out["ok"].astype(bool).copy()
    for o in objectives:
        values = out[o.metric]
        vacuous = o.metric in ("itl_ms", "itl_max_ms", "tpot_ms")
        met = (values <= o.bound_ms) | (values.isna() & vacuous)
        met &= out["ok"].astype(bool)
        out[o.name] = met
        good &= met
    out["good"] = good
    return out


def evaluate(
    rows: pd.DataFrame,
    slo: Mapping[str, Any] | list[Objective],
    duration_s: float,
    *,
    confidence: float = CONFIDENCE,
) -> dict[str, Any]:
    """Attainment and goodput of a load test's rows under ``slo`` over a measured window of
    ``duration_s`` seconds (``summary["duration_s"]``). Returns a JSON-ready dict:

    - ``slo``: the SLO as given; ``objectives``: their names;
    - ``n`` (finished measured requests), ``good``, ``attainment`` and its Wilson interval
      ``attainment_low`` / ``attainment_high`` at ``confidence``;
    - ``goodput_rps`` and ``goodput_tps`` (good requests and their output tokens per second);
    - ``shares``: per objective, the share of requests meeting its bound;
    - ``percentiles``: per percentile objective, the measured percentile of the metric
      (successful requests; failures count as not meeting it through ``shares``), the share
      required and whether it holds;
    - ``slo_met``: every percentile objective holds (None without any);
    - ``binding``: the objective the fewest requests meet (None when all meet every one).
    """
    objectives = slo if isinstance(slo, list) else parse_slo(slo)
    judged = judge(rows, objectives)
    n, good = len(judged), int(judged["good"].sum())
    low, high = wilson_interval(good, n, confidence)
    shares = {o.name: (float(judged[o.name].mean()) if n else math.nan) for o in objectives}
    percentiles: dict[str, Any] = {}
    for o in objectives:
        if o.percentile is None:
            continue
        values = judged.loc[judged["ok"].astype(bool), o.metric].dropna()
        measured = float(np.percentile(values, o.percentile)) if len(values) else math.nan
        share = shares[o.name]
        percentiles[o.name] = {
            "value_ms": measured,
            "required_share": o.required_share,
            "share": share,
            "met": bool(n and share >= (o.required_share or 0)),
        }
    tokens = float(judged.loc[judged["good"], "output_tokens"].fillna(0).sum())
    worst = min(shares, key=lambda k: shares[k]) if shares and n else None
    return {
        "slo": _plain(slo if not isinstance(slo, list) else {o.name: o.bound_ms for o in slo}),
        "objectives": [o.name for o in objectives],
        "confidence": confidence,
        "n": n,
        "good": good,
        "attainment": good / n if n else math.nan,
        "attainment_low": low,
        "attainment_high": high,
        "goodput_rps": good / duration_s if duration_s > 0 else math.nan,
        "goodput_tps": tokens / duration_s if duration_s > 0 else math.nan,
        "shares": shares,
        "percentiles": percentiles,
        "slo_met": all(p["met"] for p in percentiles.values()) if percentiles else None,
        "binding": worst if worst is not None and shares[worst] < 1 else None,
    }


def _plain(value: Any) -> Any:
    """A mapping as plain dicts (JSON-ready)."""
    return {k: _plain(v) for k, v in value.items()} if isinstance(value, Mapping) else value


def summary_columns(slo_summary: Mapping[str, Any] | None) -> dict[str, Any]:
    """The columns a summary row gets from :func:`evaluate`'s dict (none without an SLO):
    ``slo``, ``attainment`` with ``attainment_low`` / ``attainment_high``, ``goodput_rps``,
    ``goodput_tps`` and ``slo_met``."""
    if not slo_summary:
        return {}
    s = slo_summary
    return {
        "slo": ", ".join(s["objectives"]),
        "attainment": s["attainment"],
        "attainment_low": s["attainment_low"],
        "attainment_high": s["attainment_high"],
        "goodput_rps": s["goodput_rps"],
        "goodput_tps": s["goodput_tps"],
        "slo_met": s["slo_met"],
    }


__all__ = [
    "CONFIDENCE",
    "SLO_METRICS",
    "Objective",
    "evaluate",
    "judge",
    "min_requests",
    "parse_slo",
    "parse_slo_text",
    "request_metrics",
    "slo_label",
    "slo_problem",
    "summary_columns",
    "t_interval",
    "wilson_interval",
]
