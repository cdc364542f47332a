"""The server's own view of a load test: its per-request timings and its Prometheus ``/metrics``.

**Per-request timings.** llama.cpp's ``llama-server`` adds a ``timings`` object to each answer
(kept raw in the ``server_timings`` column): :func:`server_timing_columns` turns it into columns
(``server_prompt_ms``: the prompt's processing, ``server_decode_ms``: the generation,
``server_prompt_tokens`` processed, ``server_cached_tokens`` reused from its prompt cache,
``server_output_tokens``) and ``ttft_minus_server_prompt_ms``: the client's TTFT minus the
server's prompt time, i.e. the time the server's figure leaves out (waiting for a slot,
tokenising, HTTP both ways). :func:`server_timing_summary` gives their P50 / P99 / mean over the
measured requests (the load test's ``summary["server_timings"]``).

**/metrics.** :class:`MetricsScraper` reads the server's Prometheus endpoint before the load test,
every ``interval_s`` during it (a background thread, each read bounded by ``timeout_s``) and
after it, with ``prometheus_client``'s text-format parser. :func:`summarize` reports over that
window: the server's own TTFT, inter-token, time-per-output-token, end-to-end, queue and prefill
histograms (the count, the mean from ``_sum``/``_count`` and P50 / P99 interpolated linearly
within the buckets of the window's delta, as Prometheus' ``histogram_quantile`` does; the bucket
holding the percentile bounds its error), KV-cache use and requests waiting and running (mean
and max of the samples taken), and the prompt tokens served from the prefix cache. The names
read, by engine (the engine is recognised from the names the server exposes):

- vLLM (``/metrics`` by default; 0.2x-0.3x): ``vllm:time_to_first_token_seconds``,
  ``vllm:inter_token_latency_seconds`` (``vllm:time_per_output_token_seconds`` in older
  versions), ``vllm:request_time_per_output_token_seconds``,
  ``vllm:e2e_request_latency_seconds``, ``vllm:request_queue_time_seconds``,
  ``vllm:request_prefill_time_seconds``; ``vllm:kv_cache_usage_perc`` (formerly
  ``vllm:gpu_cache_usage_perc``), ``vllm:num_requests_waiting``, ``vllm:num_requests_running``;
  ``vllm:prefix_cache_hits`` / ``vllm:prefix_cache_queries`` (tokens; formerly
  ``vllm:gpu_prefix_cache_*``), ``vllm:prompt_tokens``, ``vllm:generation_tokens``.
- SGLang (with ``--enable-metrics``, which optbench passes): ``sglang:time_to_first_token_seconds``,
  ``sglang:inter_token_latency_seconds``, ``sglang:e2e_request_latency_seconds``,
  ``sglang:queue_time_seconds``; ``sglang:token_usage`` (KV-cache use), ``sglang:num_queue_reqs``,
  ``sglang:num_running_reqs``, ``sglang:cache_hit_rate``; ``sglang:cached_tokens``,
  ``sglang:prompt_tokens``, ``sglang:generation_tokens``.
- llama.cpp (``llama-server --metrics``, which optbench passes; counters, no histograms):
  ``llamacpp:prompt_tokens`` (uncached), ``llamacpp:prompt_tokens_cached``,
  ``llamacpp:prompt_seconds``, ``llamacpp:tokens_predicted``, ``llamacpp:tokens_predicted_seconds``
  (giving the mean prompt and decode time per token), ``llamacpp:requests_processing``,
  ``llamacpp:requests_deferred`` (waiting for a slot), ``llamacpp:kv_cache_usage_ratio`` where
  the version has it.

**The window.** Given the load test's measured window (``MetricsScraper.summary(window=(start,
end))`` on ``time.monotonic()``'s clock; :class:`optbench.evidence.Observer` passes it), the
deltas are taken between the two reads nearest its edges (:func:`nearest_window`), so the warm-up
requests that ended more than half a scrape interval before the measured window began are not
counted; ``start_offset_s`` and ``end_offset_s`` say how far those reads were from the edges
(the residual error: at most about half the scrape interval each, when every read succeeded),
and ``window`` is ``measured``. Without it (``window`` = ``load test``) the deltas run from the
read before the load test call to the one after it, warm-up included. The client side of a
comparison (:func:`client_vs_server`) is computed over the same requests: measured ones for a
measured window, all of them otherwise.
A server without ``/metrics`` (or one that refuses it) is reported as unavailable with the
reason; scraping never fails a run.
"""

from __future__ import annotations

import json
import math
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import pandas as pd
from prometheus_client.parser import text_string_to_metric_families

from optbench.urls import redact_urls

#: Seconds between scrapes while the load test runs, and the longest one scrape may take.
DEFAULT_INTERVAL_S = 2.0
DEFAULT_TIMEOUT_S = 2.0


# --------------------------------------------------------------------------- per-request timings

#: The ``server_timings`` fields (llama.cpp's names) and the columns they become.
TIMING_COLUMNS = {
    "prompt_ms": "server_prompt_ms",
    "predicted_ms": "server_decode_ms",
    "prompt_n": "server_prompt_tokens",
    "cache_n": "server_cached_tokens",
    "predicted_n": "server_output_tokens",
}


def _timings(text: Any) -> dict[str, Any]:
    if not isinstance(text, str) or not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def server_timing_columns(requests: pd.DataFrame) -> pd.DataFrame:
    """``requests`` with the columns of :data:`TIMING_COLUMNS` and
    ``ttft_minus_server_prompt_ms`` (NaN where the server sent no timings); unchanged when no
    row has a ``server_timings`` column."""
    if "server_timings" not in requests or requests["server_timings"].isna().all():
        return requests
    parsed = [_timings(t) for t in requests["server_timings"]]
    out = requests.copy()
    for key, column in TIMING_COLUMNS.items():
        out[column] = pd.to_numeric(pd.Series([p.get(key) for p in parsed], index=requests.index), errors="coerce")
    out["ttft_minus_server_prompt_ms"] = out["ttft_ms"] - out["server_prompt_ms"]
    return out


def _stats(values: Any) -> dict[str, float] | None:
    arr = np.asarray(values, dtype=float)
    arr = arr[np.isfinite(arr)]
    if not arr.size:
        return None
    return {
        "count": int(arr.size),
        "mean": float(arr.mean()),
        "p50": float(np.percentile(arr, 50)),
        "p99": float(np.percentile(arr, 99)),
    }


def server_timing_summary(requests: pd.DataFrame, measured_only: bool = True) -> dict[str, Any] | None:
    """P50 / P99 / mean of the server's per-request prompt time, of TTFT minus it, and of its
    TPOT (``server_tpot_ms``: ``predicted_ms / (predicted_n - 1)``; llama.cpp's decode time runs
    from the first generated token to the last, like the client's E2E - TTFT), and the share of prompt tokens it served from its cache, over the
    successful (and, with ``measured_only``, not warm-up) requests that carry timings; None
    when none does."""
    df = server_timing_columns(requests)
    if "server_prompt_ms" not in df:
        return None
    rows = df[df["success"] & df["server_prompt_ms"].notna()]
    if measured_only and "warmup" in rows:
        rows = rows[~rows["warmup"]]
    if rows.empty:
        return None
    # llama.cpp's predicted_ms runs from the first generated token to the last, like the
    # client's E2E - TTFT: per token it is the server's TPOT.
    per_token = rows["server_decode_ms"] / (rows["server_output_tokens"] - 1).where(rows["server_output_tokens"] > 1)
    prompt, cached = rows["server_prompt_tokens"].sum(), rows["server_cached_tokens"].fillna(0).sum()
    return {
        "count": int(len(rows)),
        "server_prompt_ms": _stats(rows["server_prompt_ms"]),
        "ttft_minus_server_prompt_ms": _stats(rows["ttft_minus_server_prompt_ms"]),
        "server_tpot_ms": _stats(per_token),
        "cached_prompt_share": float(cached / (prompt + cached)) if prompt + cached > 0 else None,
    }


# --------------------------------------------------------------------------- /metrics


@dataclass
class Histogram:
    """A Prometheus histogram summed over its label sets: cumulative counts by upper bound."""

    buckets: dict[float, float] = field(default_factory=dict)
    sum: float = 0.0
    count: float = 0.0

    def minus(self, earlier: "Histogram | None") -> "Histogram":
        """The observations made since ``earlier`` (a counter reset leaves this one as is)."""
        if earlier is None or earlier.count > self.count:
            return self
        return Histogram(
            {le: c - earlier.buckets.get(le, 0.0) for le, c in self.buckets.items()},
            self.sum - earlier.sum,
            self.count - earlier.count,
        )

    def quantile(self, q: float) -> tuple[float, float, float] | None:
        """(estimate, lower bound, upper bound) of quantile ``q`` by linear interpolation within
        the bucket that holds it (Prometheus' ``histogram_quantile``); in the +Inf bucket the
        estimate is the highest finite bound. None without observations."""
        bounds = sorted(self.buckets)
        total = self.buckets.get(math.inf, self.count)
        if total <= 0 or not bounds:
            return None
        rank = q * total
        lower, below = 0.0, 0.0
        for le in bounds:
            cum = self.buckets[le]
            if cum >= rank and cum > below:
                if math.isinf(le):
                    return lower, lower, math.inf
                return lower + (le - lower) * (rank - below) / (cum - below), lower, le
            lower, below = le, cum
        return lower, lower, math.inf


@dataclass
class Snapshot:
    """One read of ``/metrics``: each sample name's sum and number of series (label sets), and
    each histogram family summed over its label sets."""

    time: float
    values: dict[str, tuple[float, int]] = field(default_factory=dict)
    histograms: dict[str, Histogram] = field(default_factory=dict)

    def total(self, *names: str) -> float | None:
        """The sum over label sets of the first of ``names`` present."""
        for n in names:
            if n in self.values:
                return self.values[n][0]
        return None

    def mean(self, *names: str) -> float | None:
        """The mean over label sets of the first of ``names`` present."""
        for n in names:
            if n in self.values:
                s, k = self.values[n]
                return s / k
        return None


def parse_metrics(text: str, at: float | None = None) -> Snapshot:
    """Parses Prometheus text exposition with ``prometheus_client``'s parser (a malformed line
    raises ``ValueError``)."""
    snap = Snapshot(time.monotonic() if at is None else at)
    for family in text_string_to_metric_families(text):
        if family.type == "histogram":
            h = snap.histograms.setdefault(family.name, Histogram())
            for s in family.samples:
                if s.name.endswith("_bucket") and "le" in s.labels:
                    le = float(s.labels["le"])
                    h.buckets[le] = h.buckets.get(le, 0.0) + s.value
                elif s.name.endswith("_sum"):
                    h.sum += s.value
                elif s.name.endswith("_count"):
                    h.count += s.value
            continue
        for s in family.samples:
            total, n = snap.values.get(s.name, (0.0, 0))
            snap.values[s.name] = (total + s.value, n + 1)
    return snap


@dataclass(frozen=True)
class EngineNames:
    """Where an engine keeps each quantity (alternatives in order: newer names first)."""

    engine: str
    prefix: str
    histograms: Mapping[str, tuple[str, ...]]
    #: Gauges whose mean over label sets is reported: fractions (KV-cache use, hit rates).
    fractions: Mapping[str, tuple[str, ...]]
    #: Gauges summed over label sets: request counts.
    counts: Mapping[str, tuple[str, ...]]
    #: Counters (their delta over the window).
    counters: Mapping[str, tuple[str, ...]]


ENGINES: tuple[EngineNames, ...] = (
    EngineNames(
        "vllm",
        "vllm:",
        histograms={
            "ttft_ms": ("vllm:time_to_first_token_seconds",),
            "itl_ms": ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"),
            "tpot_ms": ("vllm:request_time_per_output_token_seconds",),
            "e2e_ms": ("vllm:e2e_request_latency_seconds",),
            "queue_ms": ("vllm:request_queue_time_seconds",),
            "prefill_ms": ("vllm:request_prefill_time_seconds",),
        },
        fractions={"kv_cache_usage": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")},
        counts={"requests_waiting": ("vllm:num_requests_waiting",), "requests_running": ("vllm:num_requests_running",)},
        counters={
            "prefix_cache_hits": ("vllm:prefix_cache_hits_total", "vllm:gpu_prefix_cache_hits_total"),
            "prefix_cache_queries": ("vllm:prefix_cache_queries_total", "vllm:gpu_prefix_cache_queries_total"),
            "prompt_tokens": ("vllm:prompt_tokens_total",),
            "generation_tokens": ("vllm:generation_tokens_total",),
        },
    ),
    EngineNames(
        "sglang",
        "sglang:",
        histograms={
            "ttft_ms": ("sglang:time_to_first_token_seconds",),
            "itl_ms": ("sglang:inter_token_latency_seconds",),
            "e2e_ms": ("sglang:e2e_request_latency_seconds",),
            "queue_ms": ("sglang:queue_time_seconds",),
        },
        fractions={"kv_cache_usage": ("sglang:token_usage",), "cache_hit_rate": ("sglang:cache_hit_rate",)},
        counts={"requests_waiting": ("sglang:num_queue_reqs",), "requests_running": ("sglang:num_running_reqs",)},
        counters={
            "cached_prompt_tokens": ("sglang:cached_tokens_total",),
            "prompt_tokens": ("sglang:prompt_tokens_total",),
            "generation_tokens": ("sglang:generation_tokens_total",),
        },
    ),
    EngineNames(
        "llama.cpp",
        "llamacpp:",
        histograms={},
        fractions={"kv_cache_usage": ("llamacpp:kv_cache_usage_ratio",)},
        counts={
            "requests_waiting": ("llamacpp:requests_deferred",),
            "requests_running": ("llamacpp:requests_processing",),
        },
        counters={
            "prompt_tokens": ("llamacpp:prompt_tokens_total",),
            "cached_prompt_tokens": ("llamacpp:prompt_tokens_cached_total",),
            "prompt_seconds": ("llamacpp:prompt_seconds_total",),
            "generation_tokens": ("llamacpp:tokens_predicted_total",),
            "generation_seconds": ("llamacpp:tokens_predicted_seconds_total",),
        },
    ),
)


def engine_names(snap: Snapshot) -> EngineNames | None:
    """The engine whose metric names ``snap`` holds (the most of them), or None."""
    names = [*snap.values, *snap.histograms]
    counts = [(sum(n.startswith(e.prefix) for n in names), e) for e in ENGINES]
    best = max(counts, key=lambda c: c[0])
    return best[1] if best[0] else None


class MetricsScraper:
    """Reads ``<base_url>/metrics`` before (``start`` / entering), during (a daemon thread,
    every ``interval_s``) and after (``stop`` / leaving) a load test; :meth:`summary` reports
    over that window. Never raises for the server's failures: they are counted and the last
    one is kept."""

    def __init__(
        self,
        base_url: str,
        *,
        interval_s: float = DEFAULT_INTERVAL_S,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        api_key: str | None = None,
    ) -> None:
        root = base_url.rstrip("/")
        self.url = (root[: -len("/v1")] if root.endswith("/v1") else root) + "/metrics"
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.before: Snapshot | None = None
        self.after: Snapshot | None = None
        self.during: list[Snapshot] = []
        self.attempts = 0
        self.failures = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.started = self.stopped = 0.0

    def scrape(self) -> Snapshot | None:
        """One read; None (and the error recorded) when it fails."""
        self.attempts += 1
        try:
            req = urllib.request.Request(self.url, headers=self.headers)
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                text = resp.read(64 * 1024 * 1024).decode("utf-8", errors="replace")
            return parse_metrics(text)
        except urllib.error.HTTPError as e:
            self.last_error = f"HTTP {e.code} from {redact_urls(self.url)}"
        except (OSError, ValueError) as e:  # refused, timed out, reset; not Prometheus text
            self.last_error = f"{type(e).__name__}: {redact_urls(str(e))}"
        self.failures += 1
        return None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            snap = self.scrape()
            if snap is not None:
                self.during.append(snap)

    def start(self) -> "MetricsScraper":
        self.started = time.monotonic()
        self.before = self.scrape()
        if self.before is not None:  # a server without /metrics is not polled in vain
            self._thread = threading.Thread(target=self._loop, name="optbench-metrics", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.timeout_s + 1.0)
        if self.before is not None:
            self.after = self.scrape()
        self.stopped = time.monotonic()

    def __enter__(self) -> "MetricsScraper":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def summary(self, window: tuple[float, float] | None = None) -> dict[str, Any]:
        """:func:`summarize` of what was read, with the URL and the scrape counts; over the reads
        nearest ``window``'s edges (:func:`nearest_window`) when given."""
        reads = (self.before, self.during, self.after)
        edges = nearest_window(reads, window) if window is not None else None
        out = summarize(*(edges or reads))
        if out.get("available"):
            out["window"] = "load test"
            if edges is not None and window is not None:
                out.update(
                    window="measured",
                    start_offset_s=edges[0].time - window[0],
                    end_offset_s=edges[2].time - window[1],
                )
        out.update(url=redact_urls(self.url), scrapes=self.attempts, failed_scrapes=self.failures)
        if self.last_error:
            out["last_error"] = self.last_error
        return out


def nearest_window(
    reads: tuple[Snapshot | None, list[Snapshot], Snapshot | None], window: tuple[float, float]
) -> tuple[Snapshot, list[Snapshot], Snapshot] | None:
    """The reads (before, during, after) cut to the ones nearest ``window``'s start and end
    (start, end on ``time.monotonic()``'s clock), with those between them; None when the reads
    cannot frame it (no read before or after, or the two nearest are the same read)."""
    before, during, after = reads
    if before is None or after is None:
        return None
    snaps = sorted([before, *during, after], key=lambda s: s.time)
    first = min(snaps, key=lambda s: abs(s.time - window[0]))
    later = [s for s in snaps if s.time > first.time]
    if not later:
        return None
    last = min(later, key=lambda s: abs(s.time - window[1]))
    return first, [s for s in snaps if first.time < s.time < last.time], last


def _hist_stats(h: Histogram) -> dict[str, Any] | None:
    if h.count <= 0:
        return None
    out: dict[str, Any] = {"count": int(round(h.count)), "mean": 1e3 * h.sum / h.count}
    for name, q in (("p50", 0.5), ("p99", 0.99)):
        est = h.quantile(q)
        if est is not None:
            value, low, high = est
            out[name] = 1e3 * value
            out[f"{name}_bucket"] = [1e3 * low, None if math.isinf(high) else 1e3 * high]
    return out


def summarize(before: Snapshot | None, during: list[Snapshot], after: Snapshot | None) -> dict[str, Any]:
    """What the server's metrics say about the window from ``before`` to ``after`` (see the
    module docs); ``{"available": False, "reason": ...}`` without both reads or without any
    name this module knows."""
    if before is None or after is None:
        return {"available": False, "reason": "no /metrics" if before is None else "the last read failed"}
    names = engine_names(after)
    if names is None:
        return {"available": False, "reason": "no vLLM, SGLang or llama.cpp metrics at /metrics"}
    out: dict[str, Any] = {"available": True, "engine": names.engine, "window_s": after.time - before.time}
    hists: dict[str, Any] = {}
    for key, alternatives in names.histograms.items():
        family = next((a for a in alternatives if a in after.histograms), None)
        if family is None:
            continue
        stats = _hist_stats(after.histograms[family].minus(before.histograms.get(family)))
        if stats is not None:
            hists[key] = {"metric": family, **stats}
    out["histograms"] = hists
    samples = [before, *during, after]
    gauges: dict[str, Any] = {}
    for kind, table in (("mean", names.fractions), ("total", names.counts)):
        for key, alternatives in table.items():
            values = [getattr(s, kind)(*alternatives) for s in samples]
            present = [v for v in values if v is not None]
            if present:
                gauges[key] = {"mean": float(np.mean(present)), "max": float(max(present)), "samples": len(present)}
    out["gauges"] = gauges
    counters: dict[str, float] = {}
    for key, alternatives in names.counters.items():
        a, b = after.total(*alternatives), before.total(*alternatives)
        if a is not None:
            counters[key] = a - (b or 0.0) if b is not None and a >= b else a
    out["counters"] = counters
    out.update(_derived(counters, gauges))
    return out


def _derived(c: Mapping[str, float], gauges: Mapping[str, Any]) -> dict[str, Any]:
    """Prefix-cache hit rate (of prompt tokens) and, for llama.cpp, time per token."""
    out: dict[str, Any] = {"prefix_cache_hit_rate": None}
    if c.get("prefix_cache_queries"):
        out["prefix_cache_hit_rate"] = c.get("prefix_cache_hits", 0.0) / c["prefix_cache_queries"]
    elif "cached_prompt_tokens" in c and "prompt_seconds" in c:  # llama.cpp: prompt_tokens excludes cached ones
        total = c["cached_prompt_tokens"] + c.get("prompt_tokens", 0.0)
        out["prefix_cache_hit_rate"] = c["cached_prompt_tokens"] / total if total else None
    elif "cached_prompt_tokens" in c and c.get("prompt_tokens"):  # SGLang: prompt_tokens includes them
        out["prefix_cache_hit_rate"] = c["cached_prompt_tokens"] / c["prompt_tokens"]
    elif "cache_hit_rate" in gauges:
        out["prefix_cache_hit_rate"] = gauges["cache_hit_rate"]["mean"]
    if c.get("prompt_tokens") and "prompt_seconds" in c:
        out["prompt_ms_per_token"] = 1e3 * c["prompt_seconds"] / c["prompt_tokens"]
    if c.get("generation_tokens") and "generation_seconds" in c:
        out["decode_ms_per_token"] = 1e3 * c["generation_seconds"] / c["generation_tokens"]
    return out


def summary_line(m: Mapping[str, Any] | None) -> str:
    """The server's metrics (:meth:`MetricsScraper.summary`) in one line."""
    if not m:
        return "server metrics: not scraped"
    if not m.get("available"):
        return f"server metrics: none ({m.get('reason')}{'; ' + m['last_error'] if m.get('last_error') else ''})"
    parts = []
    for key, label in (("ttft_ms", "TTFT"), ("itl_ms", "ITL"), ("e2e_ms", "E2E"), ("queue_ms", "queue")):
        h = m.get("histograms", {}).get(key)
        if h and h.get("p50") is not None:
            parts.append(f"{label} P50 {h['p50']:.1f} ms")
    for key, label in (("decode_ms_per_token", "decode"), ("prompt_ms_per_token", "prompt")):
        if m.get(key) is not None:
            parts.append(f"{label} {m[key]:.2f} ms/token")
    kv = m.get("gauges", {}).get("kv_cache_usage")
    if kv:
        parts.append(f"KV cache max {100 * kv['max']:.0f}%")
    if m.get("prefix_cache_hit_rate") is not None:
        parts.append(f"prefix-cache hits {100 * m['prefix_cache_hit_rate']:.0f}%")
    return f"server metrics ({m['engine']}, {m.get('window_s', 0):.1f} s): " + (", ".join(parts) or "no activity")


# --------------------------------------------------------------------------- client vs server


def _client_values(requests: pd.DataFrame, measured_only: bool = False) -> dict[str, dict[str, float]]:
    """The client's P50 / P99 of TTFT, ITL, TPOT and E2E over the successful requests, warm-up
    included unless ``measured_only`` (as the server's window holds them)."""
    ok = requests[requests["success"]]
    if measured_only:
        ok = ok[~ok["warmup"].astype(bool)]
    itl = [g for gaps in ok["itl_ms"] if gaps is not None for g in gaps] if "itl_ms" in ok else []
    out = {}
    for key, values in (
        ("ttft_ms", ok["ttft_ms"]),
        ("itl_ms", itl),
        ("tpot_ms", ok["tpot_ms"]),
        ("e2e_ms", ok["e2e_ms"]),
    ):
        s = _stats(values)
        if s:
            out[key] = s
    return out


#: The quantities compared, the calibrated error that bounds the client's side, and a name.
COMPARED = (
    ("ttft_ms", "p50", "ttft_err_p50_ms", "TTFT P50"),
    ("ttft_ms", "p99", "ttft_err_p99_ms", "TTFT P99"),
    ("itl_ms", "p50", "itl_err_p50_ms", "ITL P50"),
    ("itl_ms", "p99", "itl_err_p99_ms", "ITL P99"),
    ("tpot_ms", "p50", "itl_err_p50_ms", "TPOT P50"),
    ("e2e_ms", "p50", "ttft_err_p50_ms", "E2E P50"),
    ("e2e_ms", "p99", "ttft_err_p99_ms", "E2E P99"),
)


def client_vs_server(
    requests: pd.DataFrame, server: Mapping[str, Any] | None, calibration: Mapping[str, Any] | None
) -> list[dict[str, Any]]:
    """Rows comparing the client's figures with the server's own for the same requests: the
    server's histograms (vLLM, SGLang) or, for llama.cpp, its per-request timings (TTFT against
    its prompt time, TPOT against its ``predicted_ms / (predicted_n - 1)``). Each row: ``quantity``,
    ``client``, ``server``, ``source``, ``difference`` (client - server), ``tolerance`` (the
    client's calibrated error at that percentile plus, for a histogram, the width of the bucket
    holding the server's percentile) and ``beyond`` (whether the difference exceeds it)."""
    measured = (server or {}).get("window") == "measured"
    client = _client_values(requests, measured_only=measured)
    cal = calibration if calibration and not calibration.get("error") else {}
    rows: list[dict[str, Any]] = []

    def add(quantity: str, c: float | None, s: float | None, source: str, err_key: str, slack: float) -> None:
        if c is None or s is None:
            return
        err = cal.get(err_key)
        tolerance = (abs(err) if err is not None else 0.0) + slack
        difference = c - s
        rows.append(
            {
                "quantity": quantity,
                "client": c,
                "server": s,
                "source": source,
                "difference": difference,
                "tolerance": tolerance,
                "calibrated": err is not None,
                "beyond": abs(difference) > tolerance,
            }
        )

    hists = (server or {}).get("histograms", {}) if (server or {}).get("available") else {}
    for metric, stat, err_key, name in COMPARED:
        h = hists.get(metric)
        if h is None or h.get(stat) is None or metric not in client:
            continue
        low, high = h[f"{stat}_bucket"]
        slack = (high - low) if high is not None else math.inf
        add(name, client[metric][stat], h[stat], h["metric"], err_key, slack)
    timings = server_timing_summary(requests, measured_only=measured)
    if timings:
        for stat in ("p50", "p99"):
            prompt = (timings.get("server_prompt_ms") or {}).get(stat)
            ttft = client.get("ttft_ms", {}).get(stat)
            add(f"TTFT {stat.upper()}", ttft, prompt, "timings.prompt_ms", f"ttft_err_{stat}_ms", 0.0)
        tpot = (timings.get("server_tpot_ms") or {}).get("p50")
        source = "timings.predicted_ms / (predicted_n - 1)"
        add("TPOT P50", client.get("tpot_ms", {}).get("p50"), tpot, source, "itl_err_p50_ms", 0.0)
    return rows


__all__ = [
    "MetricsScraper",
    "Snapshot",
    "Histogram",
    "ENGINES",
    "client_vs_server",
    "parse_metrics",
    "server_timing_columns",
    "server_timing_summary",
    "summarize",
    "summary_line",
]
