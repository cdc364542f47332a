"""Load tests over several base URLs (replicas of one deployment): the URL list, and the
per-base-URL breakdown of a run's summary.

``optbench.load_test([url1, url2], model, routing="least_outstanding")`` spreads its requests
over the URLs (``round_robin`` by default: an exact split in send order; ``least_outstanding``:
the URL with the fewest requests in flight, ties to the lowest index). Each request row says
which one served it (``base_url_index`` and ``base_url``, without credentials), and
``summary["by_base_url"]`` holds one entry per URL (:func:`breakdown`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from optbench import _core
from optbench.exceptions import ConfigError
from optbench.urls import redact_urls, without_credentials

#: The statistics of TTFT and ITL each entry of the breakdown gives.
BREAKDOWN_STATS = ("mean", "p50", "p90", "p99")


def base_url_list(base_url: str | Sequence[str]) -> list[str]:
    """``base_url`` as a list of URLs, each checked (a ``ConfigError`` names the bad one by its
    position and value, without credentials), before any request is sent."""
    if isinstance(base_url, str):
        urls = [base_url]
    elif isinstance(base_url, Sequence) and not isinstance(base_url, (bytes, bytearray)):
        urls = list(base_url)
        if not urls:
            raise ConfigError("base_url: the list of base URLs is empty")
    else:
        raise ConfigError(f"base_url must be a URL or a list of URLs, got {type(base_url).__name__}")
    for i, url in enumerate(urls):
        where = f"base_url[{i}]" if not isinstance(base_url, str) else "base_url"
        if not isinstance(url, str):
            raise ConfigError(f"{where} must be a string, got {type(url).__name__}")
        try:
            _core.check_base_url(url)
        except ConfigError as e:
            raise ConfigError(f"{where}: {redact_urls(str(e))}") from None
    return urls


def public(urls: Sequence[str]) -> str | list[str]:
    """What a result's config records: the URL (one) or the list (several), without credentials."""
    out = [without_credentials(u) for u in urls]
    return out[0] if len(out) == 1 else out


def value_stats(values: Sequence[float] | pd.Series) -> dict[str, float | int | None]:
    """``count`` and :data:`BREAKDOWN_STATS` of ``values`` (NaN left out; None where empty)."""
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if not len(v):
        return {"count": 0, **{s: None for s in BREAKDOWN_STATS}}
    # Linear interpolation between ranks, as the Rust core's percentiles.
    return {
        "count": int(len(v)),
        "mean": float(v.mean()),
        **{f"p{q}": float(np.percentile(v, q)) for q in (50, 90, 99)},
    }


def breakdown(requests: pd.DataFrame, base_urls: Sequence[str], duration_s: float) -> list[dict[str, Any]]:
    """One entry per base URL over the measured (non-warm-up) rows: ``index``, ``base_url``
    (without credentials), ``num_requests``, ``num_succeeded``, ``num_failed``,
    ``failures_by_kind``, ``request_throughput`` and ``output_token_throughput`` (over the whole
    run's window ``duration_s``, so the entries add up to the run's), and ``ttft_ms`` /
    ``itl_ms`` statistics (``count`` and :data:`BREAKDOWN_STATS`; ITL per token, over successful
    requests, as the run's)."""
    measured = requests[~requests["warmup"].astype(bool)]
    out = []
    for i, url in enumerate(base_urls):
        rows = measured[measured["base_url_index"] == i]
        ok = rows[rows["success"].astype(bool)]
        failures = rows.loc[~rows["success"].astype(bool), "error_kind"].value_counts()
        itl = [g for gaps in ok["itl_ms"] for g in gaps]
        tokens = float(ok["output_tokens"].fillna(0).sum())
        out.append(
            {
                "index": i,
                "base_url": without_credentials(url),
                "num_requests": int(len(rows)),
                "num_succeeded": int(len(ok)),
                "num_failed": int(len(rows) - len(ok)),
                "failures_by_kind": {str(k): int(n) for k, n in sorted(failures.items())},
                "request_throughput": len(ok) / duration_s if duration_s > 0 else 0.0,
                "output_token_throughput": tokens / duration_s if duration_s > 0 else 0.0,
                "ttft_ms": value_stats(ok["ttft_ms"]),
                "itl_ms": value_stats(itl),
            }
        )
    return out


def _ms(value: float | int | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def breakdown_lines(entries: Sequence[dict[str, Any]]) -> list[str]:
    """The breakdown as plain-text lines (one per base URL), for terminals and logs."""
    lines = []
    for e in entries:
        failed = f", {e['num_failed']} failed {e['failures_by_kind']}" if e["num_failed"] else ""
        lines.append(
            f"base_url[{e['index']}] {e['base_url']}: {e['num_succeeded']}/{e['num_requests']} succeeded{failed}"
            f" | TTFT p50 {_ms(e['ttft_ms']['p50'])} p99 {_ms(e['ttft_ms']['p99'])} ms"
            f" | ITL p50 {_ms(e['itl_ms']['p50'])} p99 {_ms(e['itl_ms']['p99'])} ms"
            f" | {e['request_throughput']:.3f} req/s, {e['output_token_throughput']:.1f} output tok/s"
        )
    return lines


def breakdown_markdown(entries: Sequence[dict[str, Any]]) -> list[str]:
    """The breakdown as a Markdown table (RESULTS.md)."""
    lines = [
        "| # | base URL | requests | failed | P50 TTFT (ms) | P99 TTFT (ms) | P50 ITL (ms) | P99 ITL (ms) | req/s | output tok/s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for e in entries:
        failed = str(e["num_failed"]) + (f" {e['failures_by_kind']}" if e["num_failed"] else "")
        lines.append(
            f"| {e['index']} | {e['base_url']} | {e['num_requests']} | {failed} | {_ms(e['ttft_ms']['p50'])} | "
            f"{_ms(e['ttft_ms']['p99'])} | {_ms(e['itl_ms']['p50'])} | {_ms(e['itl_ms']['p99'])} | "
            f"{e['request_throughput']:.3f} | {e['output_token_throughput']:.1f} |"
        )
    return lines


__all__ = [
    "BREAKDOWN_STATS",
    "base_url_list",
    "breakdown",
    "breakdown_lines",
    "breakdown_markdown",
    "public",
    "value_stats",
]
