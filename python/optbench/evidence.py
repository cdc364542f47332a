"""What stands beside a run's speed numbers and says how far to trust them: the client's
calibrated error (:mod:`optbench.calibration`), the server's own account of the same requests
(:mod:`optbench.server_metrics`) and GPU telemetry with energy and cost (:mod:`optbench.telemetry`).

``optbench run`` calls :func:`calibrate_for` before each load test and :class:`Observer` around
it; the results go to the configuration's ``meta.json`` (keys ``calibration``,
``server_metrics``, ``gpu_telemetry``, ``gpu_cost_per_hour``) and to the load test's summary.
The report turns them into columns of ``results.csv`` (:func:`columns`, always present, empty
where nothing was measured) and sections of RESULTS.md (:func:`markdown`), from those files
alone, so ``optbench report`` rebuilds them.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
import pyarrow.parquet as pq

from optbench import calibration as _calibration
from optbench import server_metrics as _server
from optbench import telemetry as _telemetry
from optbench.exceptions import OptbenchError

#: The concurrency an open loop without a cap is calibrated at.
OPEN_LOOP_CALIBRATION_CONCURRENCY = 8


def calibrate_for(load_test: Any) -> dict[str, Any]:
    """Calibrates the client for a load test's options (its concurrency, endpoint and output
    length up to :data:`optbench.calibration.DEFAULT_OUTPUT_TOKENS`): the calibration as a
    dict, or ``{"error": ...}`` when it could not run (it never fails a configuration)."""
    try:
        c = _calibration.calibrate(
            load_test.concurrency or OPEN_LOOP_CALIBRATION_CONCURRENCY,
            output_tokens=max(2, min(load_test.output_tokens, _calibration.DEFAULT_OUTPUT_TOKENS)),
            endpoint=load_test.endpoint,
        )
    except (OptbenchError, OSError) as e:
        return {"error": str(e)}
    return c.to_dict()


class Observer:
    """The server's ``/metrics`` and the GPUs, watched while a load test runs (``with
    Observer(...) as o: result = load_test(...)``), then :meth:`record` puts what they said in
    the load test's summary and returns it for meta.json."""

    def __init__(
        self, base_url: str, *, gpus: bool, env: Mapping[str, str] | None = None, api_key_env: str | None = None
    ) -> None:
        api_key = (env or os.environ).get(api_key_env) if api_key_env else None
        self.scraper = _server.MetricsScraper(base_url, api_key=api_key)
        self.gpus = _telemetry.GpuTelemetry(env=env) if gpus else None

    def __enter__(self) -> "Observer":
        self.scraper.start()
        if self.gpus is not None:
            self.gpus.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.gpus is not None:
            self.gpus.stop()
        self.scraper.stop()

    def record(self, result: Any, calibration: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """``server_metrics``, ``gpu_telemetry`` (and ``calibration`` when given), added to
        ``result.summary`` and returned: over the load test's measured window (warm-up
        excluded) when the result knows it, else over the whole load test call."""
        window = result.measured_window_monotonic
        if window is not None:  # the measured requests, over the measured window
            output_tokens, requests = int(result.summary["total_output_tokens"]), int(result.summary["num_requests"])
        else:  # every request of the call, over the whole sampling
            rows = result.requests
            output_tokens, requests = int(rows[rows["success"]]["output_tokens"].sum()), int(len(rows))
        if self.gpus is None:
            gpu: dict[str, Any] = {"available": False, "reason": "not sampled: optbench did not start this server"}
        else:
            gpu = self.gpus.summary(output_tokens=output_tokens, requests=requests, window=window)
        out: dict[str, Any] = {"server_metrics": self.scraper.summary(window), "gpu_telemetry": gpu}
        if calibration is not None:
            out["calibration"] = dict(calibration)
        result.summary.update(out)
        return out


def summary_lines(summary: Mapping[str, Any]) -> list[str]:
    """The evidence a load test's summary holds, one line each (for terminals and logs)."""
    lines = []
    if "calibration" in summary:
        lines.append(_calibration.summary_line(summary["calibration"]))
    t = summary.get("server_timings")
    if t and t.get("ttft_minus_server_prompt_ms"):
        gap, prompt = t["ttft_minus_server_prompt_ms"], t["server_prompt_ms"]
        lines.append(
            f"server timings ({t['count']} requests): prompt P50 {prompt['p50']:.1f} ms; TTFT minus the server's "
            f"prompt time P50 {gap['p50']:.2f} ms, P99 {gap['p99']:.2f} ms"
        )
    if "server_metrics" in summary:
        lines.append(_server.summary_line(summary["server_metrics"]))
    if "gpu_telemetry" in summary:
        lines.append(_telemetry.summary_line(summary["gpu_telemetry"]))
    return lines


# --------------------------------------------------------------------------- results.csv

#: The columns :func:`columns` adds to each configuration's row, in order.
COLUMNS = (
    "calibration_ttft_err_p50_ms",
    "calibration_ttft_err_p99_ms",
    "calibration_itl_err_p50_ms",
    "calibration_itl_err_p99_ms",
    "client_cpu_ms_per_1k_tokens",
    "calibration_large_error",
    "server_prompt_p50_ms",
    "ttft_minus_server_prompt_p50_ms",
    "ttft_minus_server_prompt_p99_ms",
    "server_metrics_engine",
    "server_ttft_p50_ms",
    "server_ttft_p99_ms",
    "server_itl_p50_ms",
    "server_itl_p99_ms",
    "server_e2e_p50_ms",
    "server_e2e_p99_ms",
    "server_queue_p50_ms",
    "server_queue_p99_ms",
    "server_kv_cache_usage_max",
    "server_prefix_cache_hit_rate",
    "client_server_disagreements",
    "gpu_energy_j",
    "gpu_energy_per_output_token_j",
    "gpu_energy_per_request_j",
    "gpu_power_mean_w",
    "gpu_memory_peak_mib",
    "gpu_utilization_mean_pct",
    "gpu_cost_per_hour",
    "cost_per_million_output_tokens",
)

_NAN = float("nan")


def _num(value: Any) -> float:
    return _NAN if value is None else float(value)


def _requests(directory: Path) -> tuple[pd.DataFrame | None, dict[str, Any]]:
    """The configuration's requests (the columns needed here) and the stored summary."""
    path = directory / "requests.parquet"
    if not path.exists():
        return None, {}
    meta = pq.read_schema(path).metadata or {}
    summary = json.loads(meta[b"optbench.summary"]) if b"optbench.summary" in meta else {}
    wanted = ["success", "warmup", "ttft_ms", "itl_ms", "tpot_ms", "e2e_ms", "server_timings", "output_tokens"]
    present = [c for c in wanted if c in pq.read_schema(path).names]
    return pd.read_parquet(path, columns=present), summary


def columns(meta: dict[str, Any]) -> dict[str, Any]:
    """One configuration's evidence columns (:data:`COLUMNS`) from its folder's files; what the
    RESULTS.md sections need is kept in ``meta["_evidence"]``."""
    row: dict[str, Any] = dict.fromkeys(COLUMNS, _NAN)
    row["calibration_large_error"] = None
    row["server_metrics_engine"] = None
    directory = Path(meta["_dir"])
    try:
        requests, summary = _requests(directory)
    except (OSError, ValueError, KeyError):  # the report names unreadable files elsewhere
        requests, summary = None, {}
    metrics = summary.get("metrics", {})
    ttft_p50 = metrics.get("ttft_ms", {}).get("p50")
    itl_p50 = metrics.get("itl_ms", {}).get("p50")
    cal = meta.get("calibration")
    warnings: list[str] = []
    if cal and not cal.get("error"):
        row["calibration_ttft_err_p50_ms"] = _num(cal.get("ttft_err_p50_ms"))
        row["calibration_ttft_err_p99_ms"] = _num(cal.get("ttft_err_p99_ms"))
        row["calibration_itl_err_p50_ms"] = _num(cal.get("itl_err_p50_ms"))
        row["calibration_itl_err_p99_ms"] = _num(cal.get("itl_err_p99_ms"))
        row["client_cpu_ms_per_1k_tokens"] = _num(cal.get("cpu_ms_per_1k_tokens"))
        warnings = _calibration.large_error_warnings(cal, ttft_p50, itl_p50)
        row["calibration_large_error"] = bool(warnings) if ttft_p50 is not None else None
    comparison: list[dict[str, Any]] = []
    timings = None
    if requests is not None and len(requests):
        timings = _server.server_timing_summary(requests)
        comparison = _server.client_vs_server(requests, meta.get("server_metrics"), cal)
    if timings:
        row["server_prompt_p50_ms"] = _num((timings.get("server_prompt_ms") or {}).get("p50"))
        gap = timings.get("ttft_minus_server_prompt_ms") or {}
        row["ttft_minus_server_prompt_p50_ms"] = _num(gap.get("p50"))
        row["ttft_minus_server_prompt_p99_ms"] = _num(gap.get("p99"))
    sm = meta.get("server_metrics") or {}
    if sm.get("available"):
        row["server_metrics_engine"] = sm.get("engine")
        hists = sm.get("histograms", {})
        for key, name in (("ttft_ms", "ttft"), ("itl_ms", "itl"), ("e2e_ms", "e2e"), ("queue_ms", "queue")):
            for stat in ("p50", "p99"):
                row[f"server_{name}_{stat}_ms"] = _num(hists.get(key, {}).get(stat))
        kv = sm.get("gauges", {}).get("kv_cache_usage")
        row["server_kv_cache_usage_max"] = _num(kv and kv.get("max"))
        row["server_prefix_cache_hit_rate"] = _num(sm.get("prefix_cache_hit_rate"))
    if comparison:
        row["client_server_disagreements"] = float(sum(r["beyond"] for r in comparison))
    gpu = meta.get("gpu_telemetry") or {}
    if gpu.get("available"):
        for key in ("energy_j", "energy_per_output_token_j", "energy_per_request_j", "power_mean_w"):
            row[f"gpu_{key}"] = _num(gpu.get(key))
        row["gpu_memory_peak_mib"] = _num(gpu.get("memory_peak_mib"))
        row["gpu_utilization_mean_pct"] = _num(gpu.get("utilization_mean_pct"))
    cost = meta.get("gpu_cost_per_hour")
    row["gpu_cost_per_hour"] = _num(cost)
    throughput = summary.get("output_token_throughput") if summary.get("duration_s", 0) > 0 else None
    row["cost_per_million_output_tokens"] = _num(_telemetry.cost_per_million_tokens(cost, throughput))
    meta["_evidence"] = {
        "calibration_warnings": warnings,
        "comparison": comparison,
        "timings": timings,
        "ttft_p50": ttft_p50,
        "itl_p50": itl_p50,
    }
    return row


# --------------------------------------------------------------------------- RESULTS.md


def _f(value: Any, fmt: str = ".2f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:{fmt}}"


def _calibration_section(metas: list[dict[str, Any]]) -> list[str]:
    if not any("calibration" in m for m in metas):
        return []
    lines = [
        "### The client's calibrated error",
        "",
        "Before each load test optbench measured its own client against its mock server, whose timings are known, "
        "at the configuration's concurrency (`optbench calibrate`; off with `--no-calibrate`). Errors are the "
        "client's percentile minus the truth's (positive: the client overstates); the ITL error counts the mock's "
        "own lateness against the client, so it is an upper bound. They qualify the TTFT and ITL figures above.",
        "",
        "| configuration | TTFT error P50 / P99 (ms) | ITL error P50 / P99 (ms) | client CPU per 1,000 tokens (ms) "
        "| calibrated at | measured P50 TTFT / ITL (ms) |",
        "|---|---|---|---|---|---|",
    ]
    notes = []
    for m in metas:
        c = m.get("calibration")
        ev = m.get("_evidence", {})
        if not c:
            lines.append(f"| {m['name']} | not calibrated | | | | |")
            continue
        if c.get("error"):
            lines.append(f"| {m['name']} | failed: {c['error']} | | | | |")
            continue
        lines.append(
            f"| {m['name']} | {_f(c.get('ttft_err_p50_ms'), '+.2f')} / {_f(c.get('ttft_err_p99_ms'), '+.2f')} "
            f"| {_f(c.get('itl_err_p50_ms'), '+.2f')} / {_f(c.get('itl_err_p99_ms'), '+.2f')} "
            f"| {_f(c.get('cpu_ms_per_1k_tokens'), '.1f')} "
            f"| concurrency {c['concurrency']}, {c['gap_ms']:g} ms gap ({_f(c.get('offered_tokens_per_s'), ',.0f')} tok/s) "
            f"| {_f(ev.get('ttft_p50'), '.1f')} / {_f(ev.get('itl_p50'), '.2f')} |"
        )
        notes += [f"- **Warning** ({m['name']}): {w}." for w in ev.get("calibration_warnings", [])]
    return lines + ([""] + notes if notes else []) + [""]


def _server_section(metas: list[dict[str, Any]]) -> list[str]:
    if not any(m.get("_evidence", {}).get("comparison") or "server_metrics" in m for m in metas):
        return []
    lines = [
        "### Client vs server",
        "",
        "The server's own account of the same requests (the measured ones on both sides: its `/metrics` read "
        "nearest the measured window's edges; warm-up included on both sides where a run did not record that "
        "window): its Prometheus histograms (vLLM, SGLang; percentiles interpolated within buckets) or llama.cpp's "
        "per-request `timings`. The tolerance is the client's calibrated error at that percentile plus, for a "
        "histogram, the width of the bucket holding the server's percentile. A server's TTFT leaves out time spent "
        "before it counts (HTTP, tokenising, waiting for a llama.cpp slot); both count ITL per token (the client "
        "splits a chunk's gap over its tokens where the server sends per-chunk usage).",
        "",
        "| configuration | quantity | client (ms) | server (ms) | server source | client − server (ms) "
        "| tolerance (ms) | within tolerance |",
        "|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for m in metas:
        for r in m.get("_evidence", {}).get("comparison", []):
            lines.append(
                f"| {m['name']} | {r['quantity']} | {_f(r['client'])} | {_f(r['server'])} | `{r['source']}` "
                f"| {_f(r['difference'], '+.2f')} | {_f(r['tolerance'])} | {'no' if r['beyond'] else 'yes'} |"
            )
            if r["beyond"]:
                notes.append(
                    f"- **Warning** ({m['name']}): client and server disagree on {r['quantity']} by "
                    f"{r['difference']:+.2f} ms, beyond the tolerance of {r['tolerance']:.2f} ms"
                    + ("" if r["calibrated"] else " (the client was not calibrated)")
                    + "."
                )
    lines += [""] + notes + ([""] if notes else [])
    for m in metas:
        if "server_metrics" in m:
            lines.append(f"- {m['name']}: {_server.summary_line(m['server_metrics'])}.")
        t = m.get("_evidence", {}).get("timings")
        if t and t.get("cached_prompt_share") is not None:
            lines.append(
                f"- {m['name']}: llama.cpp served {100 * t['cached_prompt_share']:.0f}% of the prompt tokens from its "
                f"prompt cache; TTFT minus its prompt time: P50 "
                f"{_f((t.get('ttft_minus_server_prompt_ms') or {}).get('p50'))} ms, P99 "
                f"{_f((t.get('ttft_minus_server_prompt_ms') or {}).get('p99'))} ms."
            )
    return lines + [""]


def _gpu_section(table: pd.DataFrame, metas: list[dict[str, Any]]) -> list[str]:
    if not any("gpu_telemetry" in m or m.get("gpu_cost_per_hour") is not None for m in metas):
        return []
    costs = dict(zip(table["configuration"], table["cost_per_million_output_tokens"]))
    lines, body = ["### GPU telemetry, energy and cost", ""], []
    for m in metas:
        g = m.get("gpu_telemetry") or {}
        if "gpu_telemetry" in m and not g.get("available"):
            lines.append(f"- {m['name']}: {_telemetry.summary_line(g)}.")
        if g.get("available") or m.get("gpu_cost_per_hour") is not None:
            body.append(
                f"| {m['name']} | {_f(g.get('energy_j'), ',.0f')} | {_f(g.get('energy_per_output_token_j'), '.3f')} "
                f"| {_f(g.get('energy_per_request_j'), ',.1f')} | {_f(g.get('power_mean_w'), ',.0f')} "
                f"| {_f(g.get('memory_peak_mib'), ',.0f')} | {_f(g.get('utilization_mean_pct'), '.0f')} "
                f"| {_f(m.get('gpu_cost_per_hour'), ',.2f')} | {_f(costs.get(m['name']), ',.3f')} |"
            )
    if body:
        lines += [
            "",
            "| configuration | energy (J) | J per output token | J per request | mean power (W) | peak memory (MiB) "
            "| utilisation (%) | cost per hour | cost per million output tokens |",
            "|---|---|---|---|---|---|---|---|---|",
            *body,
            "",
            "Energy is the GPUs' energy counter (or integrated power) over the load test's measured window, "
            "interpolated between the samples around its edges, divided by the measured requests' output tokens "
            "and their number (over the whole load test, warm-up included, where a run did not record that "
            "window); cost per million output tokens is `gpu_cost_per_hour` (the configuration's setting) over "
            "the measured output-token throughput.",
        ]
    return lines + [""]


def markdown(table: pd.DataFrame, metas: list[dict[str, Any]]) -> list[str]:
    """RESULTS.md's sections on the client's calibration, client vs server, and GPU telemetry
    (empty for a run that recorded none of them). ``metas`` went through :func:`columns`."""
    return _calibration_section(metas) + _server_section(metas) + _gpu_section(table, metas)


__all__ = ["COLUMNS", "Observer", "calibrate_for", "columns", "markdown", "summary_lines"]
